"""The payment layer: one payment's path and the state it needs.

``pipeline`` holds the ordered steps (validate → dedupe → risk → route → dispatch →
journal → respond); ``validation``, ``idempotency`` and ``risk`` are its checks;
``resolver`` settles unknown outcomes; ``standin`` is card stand-in processing with its
store-and-forward advice queue.
"""
