"""Faces of the daemon: fronts for people (the web page) that run inside it as child services.

A face sits above the daemon (docs/architecture.md, *Layers*), so the daemon never imports
one: faces are found as Twisted plugins providing :class:`IDaemonFace`
(``twisted/plugins/peerit_web.py``). ``twistd peerit-daemon`` offers each face's options
next to its own, lets the face check them, and hands it the composed daemon to join.
"""

import twisted.plugins
from twisted.plugin import getPlugins
from zope.interface import Attribute, Interface


class IDaemonFace(Interface):
    name = Attribute("short name, e.g. 'web'")
    optParameters = Attribute("extra twistd options, as usage.Options optParameters rows")
    optFlags = Attribute("extra twistd flags, as usage.Options optFlags rows")

    def check(options):
        """Check and complete this face's entries in ``options`` (the parsed twistd
        options); raise ``twisted.python.usage.UsageError`` with one clear line."""

    def attach(daemon, options, reactor):
        """Join ``daemon`` (``Daemon.add_face``), unless the options turned the face off."""


def daemon_faces() -> list:
    """The installed faces, by name (one per name: the first found wins)."""
    found = {}
    for face in getPlugins(IDaemonFace, twisted.plugins):
        found.setdefault(face.name, face)
    return [found[name] for name in sorted(found)]
