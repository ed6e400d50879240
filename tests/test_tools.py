"""``make tools`` (chromium, qemu-user, npm) installs only what is missing, each in its own apt transaction (apt-get replaced by a recorder)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gflnb.book import ROOT

MAKE = shutil.which("make")


def _fake_bin(tmp: Path, have: tuple[str, ...], apt_fails: bool = False) -> Path:
    """A PATH of bash and coreutils, a recording apt-get and fake versions of the tools in ``have``."""
    bin_ = tmp / "bin"
    bin_.mkdir()
    for tool in ("bash", "mktemp", "tail"):  # what the script itself runs
        (bin_ / tool).symlink_to(shutil.which(tool))
    record = tmp / "apt.log"
    (bin_ / "apt-get").write_text(f'#!{shutil.which("bash")}\necho "$*" >> {record}\n'
                                  f'[[ "$1" == install ]] && exit {1 if apt_fails else 0}\nexit 0\n')
    for tool in have:
        (bin_ / tool).write_text(f"#!{shutil.which('bash')}\necho fake {tool}\n")
    for f in bin_.iterdir():
        if not f.is_symlink():
            f.chmod(0o755)
    return bin_


def _make_tools(tmp: Path, have: tuple[str, ...], apt_fails: bool = False):
    bin_ = _fake_bin(tmp, have, apt_fails)
    p = subprocess.run([MAKE, "-s", "-C", str(ROOT), "tools"], env={"PATH": str(bin_), "HOME": str(tmp)},
                       capture_output=True, text=True)
    log = tmp / "apt.log"
    installs = [ln for ln in (log.read_text().splitlines() if log.exists() else []) if ln.startswith("install")]
    return p, installs


def test_npm_present_chromium_missing_asks_apt_for_chromium_only(tmp_path):
    p, installs = _make_tools(tmp_path, have=("npm", "qemu-x86_64"))
    assert p.returncode == 0, p.stderr
    assert installs == ["install -y -qq chromium"]


def test_each_missing_tool_is_its_own_transaction(tmp_path):
    p, installs = _make_tools(tmp_path, have=())
    assert p.returncode == 0, p.stderr
    assert installs == ["install -y -qq chromium", "install -y -qq qemu-user", "install -y -qq npm"]


def test_nothing_missing_installs_nothing(tmp_path):
    p, installs = _make_tools(tmp_path, have=("npm", "chromium", "qemu-x86_64"))
    assert p.returncode == 0 and installs == []


@pytest.mark.parametrize("have, pkg", [(("npm", "qemu-x86_64"), "chromium"), (("chromium", "qemu-x86_64"), "npm"),
                                       (("npm", "chromium"), "qemu-user")])
def test_a_failed_install_names_what_failed_and_what_to_do(tmp_path, have, pkg):
    p, installs = _make_tools(tmp_path, have=have, apt_fails=True)
    assert p.returncode != 0
    assert installs == [f"install -y -qq {pkg}"]
    assert f"'apt-get install {pkg}' failed" in p.stderr and "install it by hand" not in p.stderr
    assert f"install {pkg} by hand" in p.stderr
