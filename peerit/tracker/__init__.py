"""The peer-it tracker: sessions with daemons over TLS, the swarm table, peer introductions.

``session`` holds the logic, ``store`` the swarm table, ``protocol`` the TLS adapter,
``service``/``tap`` the ``twistd peerit-tracker`` plugin, and ``client`` the daemon's side.
"""
