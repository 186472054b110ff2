"""Performance shims over private APIs, in one place.

Each module wraps one library's internals that a hot path uses (pyOpenSSL's cffi binding,
aioquic's connection internals, Twisted's UDP and TCP transports, CPython's reference
counts). Each decides once, at import, whether the internals are there as expected (a
capability probe, exported as a module constant) and otherwise leaves the caller on the
plain, public path; nothing here adds a call per packet. The versions checked are pinned in
setup.cfg; the unit tests run every caller with its probe forced off as well.
"""
