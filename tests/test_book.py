"""The rendered book (utils/book.py): two chapters built in the ``test`` profile, offline.

The build runs the chapters in Jupyter kernels (as nbval does), so this module takes about as long
as the two notebooks; pytest-xdist gives the whole module to one worker.
"""
import re
import socket

import pytest

from utils import book

BUILT = ("00", "A")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build the book once for the module; any connection to a non-local address fails the build."""
    real_connect = socket.socket.connect

    def local_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
            raise AssertionError(f"the book build tried to reach {address!r}")
        return real_connect(sock, address)

    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", local_only)
    out = tmp_path_factory.mktemp("book")
    try:
        entries = book.build(out, profile="test", only=BUILT, timeout=900)
    finally:
        mp.undo()
    return out, entries


def test_contents_follow_the_parts(built):
    out, entries = built
    index = (out / "index.html").read_text(encoding="utf-8")
    assert [e["file"].split("_")[0] for e in entries] == list(BUILT)
    parts = [e["part"] for e in entries]
    assert parts == ["Before the book", "Appendices"]
    for e in entries:
        assert f'href="{e["file"]}"' in index and (out / e["file"]).exists()
    assert index.index(parts[0]) < index.index(parts[1])


def test_pages_hold_outputs_figures_and_navigation(built):
    out, entries = built
    for i, e in enumerate(entries):
        page = (out / e["file"]).read_text(encoding="utf-8")
        assert page.count("data:image/png;base64,") >= 3, f"{e['file']} embeds too few figures"
        assert "Traceback" not in page  # (an error in a cell already stops the build)
        assert 'href="index.html"' in page
        if i + 1 < len(entries):
            assert f'href="{entries[i + 1]["file"]}"' in page
        # the only outside address a page names is MathJax's (typesetting in an online browser)
        outside = set(re.findall(r'(?:src|href)="(https?://[^"]+)"', page))
        assert all("mathjax" in url for url in outside), outside


def test_chapter_order_and_bad_input():
    names = [p.name[:2] for p in book.chapter_notebooks()]
    assert names[0] == "00" and names.index("01") < names.index("02") < names.index("11")
    with pytest.raises(ValueError, match="only="):
        book.chapter_notebooks(["99"])
    with pytest.raises(ValueError, match="profile="):
        book.build("/tmp/unused-book", profile="fast")
