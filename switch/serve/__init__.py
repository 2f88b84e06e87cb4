"""The switch process: config, the TCP server shell, the admin HTTP app, assembly and start-up.

The composition root of the switch: it may import every layer below, and nothing below
imports it (except ``channels`` using the HTTP helpers in ``serve.http``).
"""
