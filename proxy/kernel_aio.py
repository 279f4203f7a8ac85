"""Writes to a file without a worker thread: Linux's native asynchronous I/O. `io_submit` hands
the kernel a write and returns at once; the kernel counts the write's end on an eventfd that the
event loop watches, and `io_getevents` collects the result.

The kernel keeps such a write asynchronous only with O_DIRECT, and only if it does not extend
the file: the caller sizes the file first. `KernelAio.open()` gives None where there is none of
this (another system or processor, a container that refuses the system calls); callers then
write from worker threads."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class _Calls:
    """The system call numbers, which differ from one processor to the next."""

    setup: int
    destroy: int
    getevents: int
    submit: int


_CALLS = {"x86_64": _Calls(206, 207, 208, 209), "aarch64": _Calls(0, 1, 4, 2)}
_PWRITE = 1  # IOCB_CMD_PWRITE
_RESFD = 1  # IOCB_FLAG_RESFD: count the write's end on the eventfd in aio_resfd


class _Iocb(ctypes.Structure):
    """struct iocb of linux/aio_abi.h, as laid out on a little-endian machine."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class KernelAio:
    """One kernel AIO context of the running event loop, for `depth` writes in flight at least
    (the kernel may take more)."""

    def __init__(self, syscall: Any, calls: _Calls, context: ctypes.c_ulong, eventfd: int) -> None:
        self._syscall = syscall
        self._calls = calls
        self._context = context
        self._eventfd = eventfd
        self._loop = asyncio.get_running_loop()
        self._writing: dict[int, asyncio.Future[int]] = {}
        self._serial = 0
        self._loop.add_reader(eventfd, self._collect)

    @classmethod
    def open(cls, depth: int) -> KernelAio | None:
        calls = _CALLS.get(platform.machine())  # the kernel's processor, so also:
        is_64_bit = ctypes.sizeof(ctypes.c_void_p) == 8  # a 32-bit Python numbers them apart
        if not sys.platform.startswith("linux") or calls is None or not is_64_bit:
            return None
        if sys.byteorder != "little":
            return None
        try:
            syscall = ctypes.CDLL(None, use_errno=True).syscall
        except (OSError, AttributeError):  # no C library to call the kernel through
            return None
        syscall.restype = ctypes.c_long
        context = ctypes.c_ulong(0)
        if syscall(calls.setup, ctypes.c_long(depth), ctypes.byref(context)) != 0:
            return None  # no AIO in this kernel, refused (seccomp), or the system's limit reached
        try:
            eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            syscall(calls.destroy, context)
            return None
        return cls(syscall, calls, context, eventfd)

    def write(self, fd: int, address: int, size: int, offset: int) -> asyncio.Future[int]:
        """Start writing `size` bytes from `address` to `fd` at `offset`; the future gets the
        count written. OSError if the kernel refuses to start it (EAGAIN: too many in flight).
        The memory at `address` must stay as it is until the future is done."""
        self._serial += 1
        request = _Iocb(
            aio_data=self._serial,
            aio_lio_opcode=_PWRITE,
            aio_fildes=fd,
            aio_buf=address,
            aio_nbytes=size,
            aio_offset=offset,
            aio_flags=_RESFD,
            aio_resfd=self._eventfd,
        )
        requests = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(request))
        if self._syscall(self._calls.submit, self._context, ctypes.c_long(1), requests) != 1:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        written: asyncio.Future[int] = self._loop.create_future()
        self._writing[self._serial] = written
        return written

    def close(self) -> None:
        """Wait for the writes still in flight (the kernel would wait for them too), settle
        their futures and release the context."""
        if self._eventfd < 0:
            return
        self._loop.remove_reader(self._eventfd)
        try:
            while self._writing:
                self._collect(wait=True)
        finally:
            self._syscall(self._calls.destroy, self._context)
            os.close(self._eventfd)
            self._eventfd = -1

    def _collect(self, wait: bool = False) -> None:
        """Settle the futures of the writes that have ended. Should the kernel fail to report
        them, every write in flight fails, rather than wait for a wake-up that cannot come."""
        if not wait:
            try:
                os.eventfd_read(self._eventfd)
            except BlockingIOError:
                return
        events = (_IoEvent * max(len(self._writing), 1))()
        while True:
            got = self._syscall(
                self._calls.getevents,
                self._context,
                ctypes.c_long(1 if wait else 0),
                ctypes.c_long(len(events)),
                events,
                None if wait else ctypes.byref(_Timespec(0, 0)),
            )
            if got >= 0 or ctypes.get_errno() != errno.EINTR:
                break
        if got < 0:
            code = ctypes.get_errno()
            lost = list(self._writing.values())
            self._writing.clear()
            for unreported in lost:
                if not unreported.done():
                    unreported.set_exception(OSError(code, os.strerror(code)))
            return
        for event in events[:got]:
            written = self._writing.pop(event.data, None)
            if written is None or written.done():
                continue
            if event.res < 0:
                written.set_exception(OSError(-event.res, os.strerror(-event.res)))
            else:
                written.set_result(event.res)
