//! Small wrappers over interface ioctls.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `UDP_SEGMENT` and `UDP_GRO` (linux/udp.h), options of level `IPPROTO_UDP`; the
/// libc crate defines them for uClibc only.
pub const UDP_SEGMENT: libc::c_int = 103;
pub const UDP_GRO: libc::c_int = 104;

/// Whether virtio-net headers may carry UDP segmentation (`GSO_UDP_L4`) into packet
/// sockets and TAPs: Linux 6.2 and later. Older kernels refuse such a frame whole
/// (`EINVAL`), so the datapath then sends datagram by datagram.
pub fn vnet_udp_gso() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| kernel_at_least(release().as_deref().unwrap_or(""), (6, 2)))
}

/// The running kernel's release string (`uname -r`).
fn release() -> Option<String> {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid utsname for the call.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let r: Vec<u8> = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8(r).ok()
}

/// Whether release string `r` ("6.18.44-fc", "5.15.0-91-generic") is at least
/// version `want`; an unreadable one is not.
fn kernel_at_least(r: &str, want: (u32, u32)) -> bool {
    let mut it = r.split(|c: char| !c.is_ascii_digit());
    match (it.next().map(str::parse), it.next().map(str::parse)) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= want,
        _ => false,
    }
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions_compare_by_major_and_minor() {
        use super::kernel_at_least as at_least;
        assert!(at_least("6.18.44-fc-v595", (6, 2)));
        assert!(at_least("6.2.0", (6, 2)));
        assert!(at_least("7.0", (6, 2)));
        assert!(!at_least("6.1.0-13-amd64", (6, 2)));
        assert!(!at_least("5.15.0-91-generic", (6, 2)));
        assert!(!at_least("", (6, 2)));
        assert!(!at_least("garbage", (6, 2)));
    }
}
