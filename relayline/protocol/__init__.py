"""The wire protocol, shared by the relay, the worker and the clients.

Everything both ends of a connection must agree on lives here, and nothing else: this package
imports only the standard library, so a worker host (or a client) installs none of the
relay's server-side dependencies.
"""
