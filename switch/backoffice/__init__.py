"""The back office: the double-entry ledger, settlement positions and reconciliation.

It reads the journal and the networks' settlement files after the fact; the switch
process never imports it.
"""
