"""raftvip/pysyncobj_patches.py: one pinned pysyncobj version, and the internals it patches."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from pysyncobj import journal, syncobj, tcp_connection, transport

from raftvip import pysyncobj_patches
from raftvip.errors import RaftvipError


def test_the_installed_pysyncobj_is_the_pinned_one() -> None:
    assert pysyncobj_patches.installed_version() == pysyncobj_patches.PYSYNCOBJ_VERSION
    pysyncobj_patches.check_version()


def test_another_version_is_refused_with_the_fix() -> None:
    with pytest.raises(RaftvipError, match=r"pysyncobj 0\.3\.18 is installed") as raised:
        pysyncobj_patches.check_version("0.3.18")
    assert "pip install pysyncobj==0.3.17" in str(raised.value)


def _mangled(cls: str) -> set[str]:
    """The private attributes of pysyncobj class `cls` that the patches use."""
    text = Path(pysyncobj_patches.__file__).read_text()
    return set(re.findall(rf"_{cls}__(\w+)", text))


@pytest.mark.parametrize(
    ("module", "cls"),
    [
        (tcp_connection, "TcpConnection"),
        (journal, "ResizableFile"),
        (journal, "FileJournal"),
        (syncobj, "SyncObj"),
    ],
)
def test_the_private_attributes_the_patches_use_exist(module: object, cls: str) -> None:
    """If pysyncobj renames these, the patches break: this fails first, naming what moved."""
    names = _mangled(cls)
    assert names, f"the patches use no private attribute of {cls}?"
    source = inspect.getsource(getattr(module, cls))
    missing = sorted(name for name in names if f"self.__{name}" not in source)
    assert not missing, f"{cls} no longer has {missing}"


@pytest.mark.parametrize(
    ("owner", "names"),
    [
        (
            transport.TCPTransport,
            [
                "addNode",
                "_onTick",
                "_onNewIncomingConnection",
                "_onIncomingMessageReceived",
                "_onOutgoingConnected",
                "_onMessageReceived",
                "_onDisconnected",
                "send",
            ],
        ),
        (tcp_connection.TcpConnection, ["connect", "setSockoptKeepalive", "disconnect"]),
        (
            syncobj.SyncObj,
            ["addOnTickCallback", "isNodeConnected", "_isLeader", "_getTerm", "transferLeadership"],
        ),
    ],
)
def test_the_methods_the_patches_override_or_call_exist(owner: type, names: list[str]) -> None:
    missing = [name for name in names if not callable(getattr(owner, name, None))]
    assert not missing, f"{owner.__name__} no longer has {missing}"
    source = inspect.getsource(transport.TCPTransport)
    for attribute in ("_connections", "_nodeAddrToNode", "_selfNode", "_syncObj"):
        assert f"self.{attribute}" in source, attribute
