"""Just enough ELF reading to assemble a self-contained runtime: architecture and ``DT_NEEDED`` names.

The Android runtime bundle (:mod:`host.deploy.runtime_bundle`) copies into its ``lib/`` exactly the
shared libraries its executables and extension modules need, found by following ``DT_NEEDED``
from each ELF file; nothing else of the Debian root goes in. Only 64-bit little-endian files are
read (the bundle targets aarch64); anything else is "not an ELF file we handle" (``None``).
"""

from __future__ import annotations

import struct
from pathlib import Path

_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64, _ELFDATA2LSB = 2, 1
#: e_machine values we name in messages.
EM_X86_64, EM_AARCH64 = 62, 183
_PT_DYNAMIC = 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB = 0, 1, 5
_PT_LOAD = 1


def elf_machine(path: Path) -> int | None:
    """The e_machine of a 64-bit little-endian ELF file, else None (not ELF, or another class)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != _ELF_MAGIC or head[4] != _ELFCLASS64 or head[5] != _ELFDATA2LSB:
        return None
    return struct.unpack_from("<H", head, 18)[0]


def needed_libraries(path: Path) -> list[str]:
    """The ``DT_NEEDED`` sonames of a 64-bit little-endian ELF file ([] when it has none or is not one)."""
    if elf_machine(path) is None:
        return []
    data = Path(path).read_bytes()
    e_phoff, = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz): to map DT_STRTAB's address to a file offset
    dynamic: tuple[int, int] | None = None
    for i in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data,
                                                                                   e_phoff + i * e_phentsize)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []
    entries = []
    strtab_vaddr = None
    for off in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, off)
        if tag == _DT_NULL:
            break
        if tag == _DT_NEEDED:
            entries.append(value)
        elif tag == _DT_STRTAB:
            strtab_vaddr = value
    if strtab_vaddr is None:
        return []
    strtab = next((off + strtab_vaddr - vaddr for vaddr, off, size in loads if vaddr <= strtab_vaddr < vaddr + size),
                  None)
    if strtab is None:
        return []
    names = []
    for index in entries:
        start = strtab + index
        names.append(data[start:data.index(b"\x00", start)].decode())
    return names
