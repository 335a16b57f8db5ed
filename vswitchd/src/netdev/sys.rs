//! Small wrappers over interface ioctls.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `UDP_SEGMENT` and `UDP_GRO` (linux/udp.h), options of level `IPPROTO_UDP`; the
/// libc crate defines them for uClibc only.
pub const UDP_SEGMENT: libc::c_int = 103;
pub const UDP_GRO: libc::c_int = 104;

/// The interface index of `name`, or `ENODEV`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before wrapping.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the administrative state of `name` to up.
pub fn set_up(name: &str) -> io::Result<()> {
    let sock = ctl_socket()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifru_flags is the member SIOCGIFFLAGS filled in.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The hardware address of `name`.
pub fn mac_address(name: &str) -> io::Result<[u8; 6]> {
    let sock = ctl_socket()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFHWADDR writes a sockaddr into the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifru_hwaddr is the member SIOCGIFHWADDR filled in.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// The MTU of `name`.
pub fn mtu(name: &str) -> io::Result<u32> {
    let sock = ctl_socket()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFMTU writes an int into the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifru_mtu is the member SIOCGIFMTU filled in.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// Sets the MTU of `name`.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = ctl_socket()?;
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets a socket option whose value is a `T`.
pub fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T of the given size for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            val as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Socket buffer size for datapath sockets: a burst of super-frames must fit.
pub const SOCK_BUF: libc::c_int = 8 << 20;

/// Gives `fd` [`SOCK_BUF`]-byte buffers: `which` is (forced option, plain option)
/// pairs, e.g. `(SO_RCVBUFFORCE, SO_RCVBUF)`. Forcing needs CAP_NET_ADMIN; without
/// it the plain option gets what the system's maximum allows.
pub fn big_buffers(fd: RawFd, which: &[(libc::c_int, libc::c_int)]) {
    for &(force, plain) in which {
        if setsockopt(fd, libc::SOL_SOCKET, force, &SOCK_BUF).is_err() {
            let _ = setsockopt(fd, libc::SOL_SOCKET, plain, &SOCK_BUF);
        }
    }
}

/// The pending error of a socket (`SO_ERROR`, which also clears it), if any.
pub fn take_socket_error(fd: RawFd) -> Option<io::Error> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err and len are valid for writing; the kernel writes at most len bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        Some(io::Error::last_os_error())
    } else if err != 0 {
        Some(io::Error::from_raw_os_error(err))
    } else {
        None
    }
}
