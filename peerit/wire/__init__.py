"""Wire formats, one module per protocol, declared with construct and free of Twisted.

Each module offers ``build(message) -> bytes`` and ``parse(data) -> message`` and raises only
:class:`peerit.errors.MalformedMessage` on bad bytes.
"""
