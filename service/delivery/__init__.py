"""Delivery to Marketo: the dispatcher, the sync engine, retention and outbound connections."""
