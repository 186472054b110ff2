"""pyOpenSSL's cffi binding: TLS records read into and written from our own buffers.

pyOpenSSL's ``Connection.recv`` allocates a buffer and copies out of it for every record,
and ``send`` copies what it is given; called through the binding (``OpenSSL._util``), SSL_read
fills a caller's buffer and SSL_write reads a memoryview in place. Used by ``peerit.tls``
(peer links) and ``peerit.tracker.transport`` (the tracker's sessions); each asks
:func:`binding_has` once, at import, for the functions it calls, and keeps pyOpenSSL's public
path otherwise. Checked against pyOpenSSL 24.0 to 26.4.
"""

from OpenSSL import SSL

try:
    from OpenSSL._util import ffi, lib
except ImportError:  # pragma: no cover - a pyOpenSSL without the binding: plain path
    ffi = lib = None

#: the binding is there, and Connection turns an SSL error code into pyOpenSSL's exception as
#: the direct paths expect (``_raise_ssl_error``)
BINDING = lib is not None and hasattr(SSL.Connection, "_raise_ssl_error")


def binding_has(*names: str) -> bool:
    """Whether the binding is usable and has every one of ``names`` (functions, constants)."""
    return BINDING and all(hasattr(lib, name) for name in names)
