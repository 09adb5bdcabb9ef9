"""Kernel relay: established sessions spliced socket-to-socket by an eBPF sockmap, so bytes skip user space.

A socket whose bytes the kernel should forward goes into the `sources` SOCKHASH, where an sk_skb
verdict program runs on everything it receives and redirects it to the egress of the socket that
the `targets` SOCKHASH holds under the receiving socket's cookie. Both directions of a session can
be offloaded this way, or only client to server (hybrid: results still flow through Python, where
large transfers are cheaper than the kernel's redirect workqueue). The same program
records, per socket, whether its last skb ended with ReadyForQuery, so the proxy still knows
when an ErrorResponse can be injected safely. Where BPF is unavailable (no privileges, old
kernel), `SockMap.open()` returns None and sessions stay on the Python relay.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct

log = logging.getLogger("pgaurora.proxy")

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
_libc = ctypes.CDLL(None, use_errno=True)

# enum bpf_cmd, bpf_map_type, bpf_prog_type, bpf_attach_type, bpf_func_id (linux/bpf.h)
MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, PROG_LOAD, PROG_ATTACH = 0, 1, 2, 3, 5, 8
MAP_TYPE_LRU_HASH, MAP_TYPE_SOCKHASH = 9, 18
PROG_TYPE_SK_SKB = 14
ATTACH_SK_SKB_STREAM_VERDICT, ATTACH_SK_SKB_VERDICT = 5, 38
FN_MAP_UPDATE_ELEM, FN_SKB_LOAD_BYTES, FN_GET_SOCKET_COOKIE, FN_SK_REDIRECT_HASH = 2, 26, 46, 72
SO_COOKIE = 57
MAX_SESSIONS = 65536


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, 144)
    result = _libc.syscall(_NR_BPF, cmd, buf, 144)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return result


# -- a tiny eBPF assembler: struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm; } -----------
def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _mov_reg(dst, src):
    return _insn(0xBF, dst, src)  # dst = src (64-bit)


def _mov_imm(dst, imm):
    return _insn(0xB7, dst, imm=imm)  # dst = imm


def _add_imm(dst, imm):
    return _insn(0x07, dst, imm=imm)  # dst += imm


def _sub_imm(dst, imm):
    return _insn(0x17, dst, imm=imm)  # dst -= imm


def _ldx_w(dst, src, off):
    return _insn(0x61, dst, src, off)  # dst = *(u32 *)(src + off)


def _ldx_b(dst, src, off):
    return _insn(0x71, dst, src, off)  # dst = *(u8 *)(src + off)


def _stx_dw(dst, src, off):
    return _insn(0x7B, dst, src, off)  # *(u64 *)(dst + off) = src


def _jlt_imm(dst, imm, off):
    return _insn(0xA5, dst, off=off, imm=imm)  # if dst < imm goto +off


def _jne_imm(dst, imm, off):
    return _insn(0x55, dst, off=off, imm=imm)  # if dst != imm goto +off


def _call(fn):
    return _insn(0x85, imm=fn)


def _exit():
    return _insn(0x95)


def _ld_map_fd(dst: int, fd: int) -> bytes:
    """lddw dst, map (BPF_PSEUDO_MAP_FD): two instruction slots."""
    return _insn(0x18, dst, 1, imm=fd) + _insn(0, imm=0)


def verdict_program(targets_fd: int, boundary_fd: int | None) -> bytes:
    """sk_skb verdict: note whether this skb ends with ReadyForQuery (when boundary_fd is given),
    then redirect it to the peer."""
    head = [
        _mov_reg(6, 1),  # r6 = skb
        _call(FN_GET_SOCKET_COOKIE),
        _stx_dw(10, 0, -8),  # key = cookie of the receiving socket
    ]
    redirect = [
        _mov_reg(1, 6),
        _ld_map_fd(2, targets_fd),  # return sk_redirect_hash(skb, targets, &key, 0)
        _mov_reg(3, 10),
        _add_imm(3, -8),
        _mov_imm(4, 0),
        _call(FN_SK_REDIRECT_HASH),
        _exit(),
    ]
    boundary = [] if boundary_fd is None else _record_boundary(boundary_fd)
    return b"".join(head + boundary + redirect)


def _record_boundary(boundary_fd: int) -> list[bytes]:
    """boundary[cookie] = 1 if the skb ends with ReadyForQuery ('Z', length 5, status), else 0."""
    rfq_head = int.from_bytes(b"Z\0\0\0", "little")
    return [
        _mov_imm(8, 0),  # flag = 0
        _ldx_w(7, 6, 0),  # r7 = skb->len
        _jlt_imm(7, 6, 13),  # too short for ReadyForQuery -> store
        _mov_reg(1, 6),
        _mov_reg(2, 7),
        _sub_imm(2, 6),  # skb_load_bytes(skb, len - 6, fp - 16, 6)
        _mov_reg(3, 10),
        _add_imm(3, -16),
        _mov_imm(4, 6),
        _call(FN_SKB_LOAD_BYTES),
        _jne_imm(0, 0, 5),  # load failed -> store
        _ldx_w(1, 10, -16),
        _jne_imm(1, rfq_head, 3),  # 'Z' 00 00 00
        _ldx_b(1, 10, -12),
        _jne_imm(1, 5, 1),  # length 5
        _mov_imm(8, 1),  # ends with ReadyForQuery
        _stx_dw(10, 8, -24),  # store: boundary[cookie] = flag
        _ld_map_fd(1, boundary_fd),
        _mov_reg(2, 10),
        _add_imm(2, -8),
        _mov_reg(3, 10),
        _add_imm(3, -24),
        _mov_imm(4, 0),
        _call(FN_MAP_UPDATE_ELEM),
    ]


def socket_cookie(sock) -> int:
    return struct.unpack("<Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


class SockMap:
    """The loaded program and its maps; one per proxy process."""

    def __init__(self, sources_fd: int, targets_fd: int, boundary_fd: int, prog_fd: int) -> None:
        self.sources_fd, self.targets_fd, self.boundary_fd, self.prog_fd = sources_fd, targets_fd, boundary_fd, prog_fd
        self._key, self._val = ctypes.create_string_buffer(8), ctypes.create_string_buffer(8)

    @classmethod
    def open(cls, record_boundaries: bool = True) -> SockMap | None:
        """Load the relay into the kernel, or None (logged once) when this kernel or user cannot.

        record_boundaries is needed only when the kernel also relays server -> client (the
        ReadyForQuery check then happens in the kernel); hybrid sessions skip that per-skb work."""
        if _NR_BPF is None:
            return None
        fds: list[int] = []
        try:
            for map_type, value_size in ((MAP_TYPE_SOCKHASH, 4), (MAP_TYPE_SOCKHASH, 4), (MAP_TYPE_LRU_HASH, 8)):
                fds.append(_bpf(MAP_CREATE, struct.pack("<IIIII", map_type, 8, value_size, MAX_SESSIONS * 2, 0)))
            fds.append(_load(verdict_program(fds[1], fds[2] if record_boundaries else None)))
            _attach(fds[0], fds[3])
            return cls(*fds)
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            log.info("kernel relay unavailable (%s); relaying in Python", exc.strerror or exc)
            return None

    def _update(self, cmd: int, fd: int, key: int, value: bytes | None = None, flags: int = 0) -> None:
        self._key.raw = struct.pack("<Q", key)
        addr_val = 0
        if value is not None:
            self._val.raw = value.ljust(8, b"\0")
            addr_val = ctypes.addressof(self._val)
        _bpf(cmd, struct.pack("<IIQQQ", fd, 0, ctypes.addressof(self._key), addr_val, flags))

    def splice(self, client, server, both_ways: bool = True) -> tuple[int, int]:
        """Relay client -> server (and server -> client when both_ways) in the kernel from now on;
        returns the two socket cookies, for forget()."""
        client_cookie, server_cookie = socket_cookie(client), socket_cookie(server)
        pairs = [(client_cookie, client, server)] + ([(server_cookie, server, client)] if both_ways else [])
        try:
            for cookie, source, target in pairs:  # the target first: a source redirects from its insertion on
                self._update(MAP_UPDATE_ELEM, self.targets_fd, cookie, struct.pack("<I", target.fileno()))
                self._update(MAP_UPDATE_ELEM, self.sources_fd, cookie, struct.pack("<I", source.fileno()))
        except OSError:
            self.forget(client_cookie, server_cookie)
            raise
        return client_cookie, server_cookie

    def ended_with_ready_for_query(self, cookie: int) -> bool | None:
        """Did the last bytes the kernel relayed from this socket end with ReadyForQuery? None: none relayed."""
        try:
            self._update(MAP_LOOKUP_ELEM, self.boundary_fd, cookie, b"")
        except OSError:
            return None
        return struct.unpack("<Q", self._val.raw)[0] == 1

    def forget(self, *cookies: int) -> None:
        for cookie in cookies:
            for fd in (self.sources_fd, self.targets_fd, self.boundary_fd):
                try:
                    self._update(MAP_DELETE_ELEM, fd, cookie)
                except OSError:
                    pass

    def close(self) -> None:
        for fd in (self.prog_fd, self.boundary_fd, self.targets_fd, self.sources_fd):
            os.close(fd)


def _load(program: bytes) -> int:
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b"GPL")
    log_buf = ctypes.create_string_buffer(65536)
    attr = struct.pack(
        "<IIQQIIQ",
        PROG_TYPE_SK_SKB,
        len(program) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
        1,
        len(log_buf),
        ctypes.addressof(log_buf),
    )
    try:
        return _bpf(PROG_LOAD, attr)
    except OSError as exc:
        detail = log_buf.value.decode(errors="replace").strip().splitlines()[-3:]
        raise OSError(exc.errno, f"{exc.strerror}: {' | '.join(detail)}") from None


def _attach(map_fd: int, prog_fd: int) -> None:
    try:
        _bpf(PROG_ATTACH, struct.pack("<IIII", map_fd, prog_fd, ATTACH_SK_SKB_VERDICT, 0))
    except OSError:  # kernels before 5.13 know only the stream verdict
        _bpf(PROG_ATTACH, struct.pack("<IIII", map_fd, prog_fd, ATTACH_SK_SKB_STREAM_VERDICT, 0))
