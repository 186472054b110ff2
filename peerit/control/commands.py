"""AMP commands: the contract between ``peerit-ctl`` (and ``peerit.client``) and the daemon,
as Twisted AMP ``Command`` classes made from :mod:`peerit.control.contract`.

The daemon (and :class:`peerit.client.Client`) import this module. ``ERRORS`` maps each
user-facing error class to an AMP error code, so an error raised in the daemon reaches the CLI
as the same class with the same one-line message (and so the same exit code, from
``peerit.errors``).
"""

from twisted.protocols import amp

from peerit.control import contract
from peerit.control.contract import MAX_PAGE, MAX_PEERS_LISTED  # noqa: F401 (the contract's)

# Most specific first: AMP picks the first class that matches.
ERRORS = dict(contract.ERRORS)


def amp_argument(kind):
    if isinstance(kind, contract.ListOf):
        return amp.ListOf(amp_argument(kind.element))
    if isinstance(kind, contract.Records):
        return amp.AmpList(amp_fields(kind.fields))
    return getattr(amp, kind.amp)()


def amp_fields(fields) -> list:
    return [(name, amp_argument(kind)) for name, kind in fields]


TRANSFER_FIELDS = amp_fields(contract.TRANSFER_FIELDS)
PEER_FIELDS = amp_fields(contract.PEER_FIELDS)
SEND_FIELDS = amp_fields(contract.SEND_FIELDS)


class Command(amp.Command):
    errors = ERRORS


def _command_class(spec: contract.Command) -> type:
    return type(spec.name, (Command,), {
        "__doc__": spec.doc, "__module__": __name__,
        "commandName": spec.name.encode("ascii"),
        "arguments": amp_fields(spec.arguments), "response": amp_fields(spec.response),
        "requiresAnswer": spec.requires_answer})


DaemonInfo = _command_class(contract.BY_NAME["DaemonInfo"])
Share = _command_class(contract.BY_NAME["Share"])
Download = _command_class(contract.BY_NAME["Download"])
Status = _command_class(contract.BY_NAME["Status"])
List = _command_class(contract.BY_NAME["List"])
Peers = _command_class(contract.BY_NAME["Peers"])
Pause = _command_class(contract.BY_NAME["Pause"])
Resume = _command_class(contract.BY_NAME["Resume"])
Remove = _command_class(contract.BY_NAME["Remove"])
NetCheck = _command_class(contract.BY_NAME["NetCheck"])
WebLogin = _command_class(contract.BY_NAME["WebLogin"])
Follow = _command_class(contract.BY_NAME["Follow"])
TransferChanged = _command_class(contract.BY_NAME["TransferChanged"])
DownloadLink = _command_class(contract.BY_NAME["DownloadLink"])
LinkOf = _command_class(contract.BY_NAME["LinkOf"])
ExportMetainfo = _command_class(contract.BY_NAME["ExportMetainfo"])
Send = _command_class(contract.BY_NAME["Send"])
SendStatus = _command_class(contract.BY_NAME["SendStatus"])
Receive = _command_class(contract.BY_NAME["Receive"])
