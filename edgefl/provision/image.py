"""The FAT boot partition inside a card image, written without mounting it (no root, no loop device).

The partition's offset comes from the image's own partition table
(``sfdisk --json``: the first FAT or EFI partition); mtools then reads and
writes files in it as ``IMAGE@@OFFSET``.  Nothing outside that partition's
file system changes, so any flashing tool can write the image afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgefl.errors import EdgeflError

FAT_TYPES = {"1", "4", "6", "b", "c", "e", "ef",  # MBR
             "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"}  # GPT: data, EFI
ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}


class ImageError(EdgeflError, RuntimeError):
    reason = "image"


def _tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)),
                                      None)
    if path is None:
        package = {"sfdisk": "fdisk"}.get(name, "mtools")
        raise ImageError(f"{name} is not installed (Debian: apt-get install {package})")
    return path


def boot_offset(image: str | os.PathLike) -> int:
    """Byte offset of the image's first FAT partition, from its partition table."""
    out = subprocess.run([_tool("sfdisk"), "--json", str(image)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ImageError(f"{image}: no partition table ({out.stderr.strip()})")
    table = json.loads(out.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    for part in table.get("partitions", []):
        if str(part.get("type", "")).lower() in FAT_TYPES:
            return int(part["start"]) * sector
    raise ImageError(f"{image}: no FAT partition in its {table.get('label', '?')} partition table")


class ImageBoot:
    def __init__(self, image: str | os.PathLike):
        self.image = Path(image)
        if not self.image.is_file():
            raise ImageError(f"{image}: no such image file")
        self.offset = boot_offset(self.image)
        self.target = f"{self.image}@@{self.offset}"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([_tool(tool), "-i", self.target, *args], capture_output=True, timeout=300,
                              env={**os.environ, **ENV})

    def read(self, name: str) -> bytes | None:
        out = self._run("mcopy", "-n", f"::/{name}", "-")  # to standard output
        return out.stdout if out.returncode == 0 else None

    def list(self) -> list[str]:
        out = self._run("mdir", "-/", "-b", "::/")
        if out.returncode != 0:
            raise ImageError(f"{self.target}: {out.stderr.decode(errors='replace').strip()}")
        return sorted(line.removeprefix("::/") for line in out.stdout.decode().splitlines() if line.strip())

    def write(self, files: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            stage = Path(tmp)
            for name, data in files.items():
                p = stage / name
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            entries = sorted(str(p) for p in stage.iterdir())
            out = self._run("mcopy", "-s", "-o", "-D", "o", "-Q", *entries, "::/")
            if out.returncode != 0:
                raise ImageError(f"mcopy into {self.target}: {out.stderr.decode(errors='replace').strip()}")

    def extract(self, out: str | os.PathLike) -> Path:
        """Copy the whole partition's files out (for inspection and the tests)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        run = self._run("mcopy", "-s", "-n", "::/*", str(out))
        if run.returncode != 0:
            raise ImageError(f"mcopy out of {self.target}: {run.stderr.decode(errors='replace').strip()}")
        return out
