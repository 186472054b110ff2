"""The daemon's answers as typed values: frozen dataclasses whose fields are the response
lists of :mod:`peerit.control.contract`, so the two cannot disagree. No Twisted here: both
clients (:class:`peerit.client.Client`, :class:`peerit.client.BlockingClient`) return these.

Each class is made the first time it is named (``results.Started``, ``from peerit.control.results
import Started``): making all of them costs ~10 ms, paid by every ``peerit-ctl`` command before
it could reach the daemon, and a command meets one or two. For the same reason dataclasses
(with inspect, ast and dis, ~9 ms) is imported when a class is first made or read, once the
command is on its way.
"""

from peerit.control import contract


def _result_class(name: str, fields, nested: dict, doc: str):
    """A frozen dataclass with one field per ``(name, kind)`` of a contract field list;
    ``nested`` gives the dataclass of each ``Records`` field's items."""
    import dataclasses
    spec = []
    for raw, kind in fields:
        key = raw.decode()
        if isinstance(kind, contract.Records):
            python = list[nested[key]]
        elif isinstance(kind, contract.ListOf):
            python = list[kind.element.python]
        else:
            python = kind.python
        spec.append((key, python))
    cls = dataclasses.make_dataclass(name, spec, frozen=True)
    cls.__module__ = "peerit.client"  # where users meet them
    cls.__doc__ = doc
    cls._nested = nested
    return cls


def from_answer(cls, answer: dict):
    """An answer (values by field name) as ``cls``, its nested records as theirs."""
    import dataclasses
    values = {}
    for field in dataclasses.fields(cls):
        value = answer[field.name]
        item = cls._nested.get(field.name)
        values[field.name] = [from_answer(item, v) for v in value] if item else value
    return cls(**values)


def as_json(result):
    """A result (or a list of them) as plain dicts and lists, for ``json.dump``."""
    import dataclasses
    if isinstance(result, list):
        return [as_json(r) for r in result]
    return dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result


def _response(name: str):
    return contract.BY_NAME[name].response


# name -> (its contract field list, the classes of its Records fields' items, docstring)
_CLASSES = {
    "TransferStatus": (contract.TRANSFER_FIELDS, {},
                       "One transfer, as ``status`` and ``list`` report it."),
    "PeerInfo": (contract.PEER_FIELDS, {}, "One connected peer."),
    "DaemonInfo": (_response("DaemonInfo"), {}, "Who the daemon is and how it is connected."),
    "Shared": (_response("Share"), {}, "A share the daemon now seeds."),
    "Started": (_response("Download"), {}, "A download begun."),
    "PeerList": (_response("Peers"), {"peers": "PeerInfo"},
                 "The peers of a transfer (at most MAX_PEERS_LISTED) and how many."),
    "Done": (_response("Pause"), {}, "The transfer a pause, resume or remove acted on."),
    "LinkOf": (_response("LinkOf"), {}, "A transfer's peerit: link."),
    "Exported": (_response("ExportMetainfo"), {},
                 "Where a transfer's metadata was written as a .p2p."),
    "SendOffer": (_response("Send"), {}, "A private share and the code that names it."),
    "SendState": (contract.SEND_FIELDS, {}, "Where a send stands."),
}
__all__ = ["as_json", "from_answer", *_CLASSES]


def __getattr__(name: str):
    """A result class, made on first use and kept as this module's attribute."""
    if name not in _CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    made = globals().get(name)
    if made is None:
        fields, nested, doc = _CLASSES[name]
        made = _result_class(name, fields, {key: __getattr__(item)
                                              for key, item in nested.items()}, doc)
        globals()[name] = made
    return made


def __dir__():
    return sorted({*globals(), *_CLASSES})
