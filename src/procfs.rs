//! Who listens where, from Linux's `/proc`: what `reload` needs to know
//! about the process it replaces.

use std::path::Path;

/// The inodes of the TCP sockets listening on `port` (IPv4 and IPv6).
pub fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st ... inode: state 0A is LISTEN.
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                out.extend(f.get(9).and_then(|i| i.parse::<u64>().ok()));
            }
        }
    }
    out
}

/// The inodes of the unix sockets listening at `path`.
pub fn listening_unix_inodes(path: &Path) -> Vec<u64> {
    let path = path.to_string_lossy();
    let Ok(text) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is
    // __SO_ACCEPTCON, set by listen(2).
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            if f.get(7) == Some(&&*path) && flags & 0x10000 != 0 {
                f.get(6)?.parse().ok()
            } else {
                None
            }
        })
        .collect()
}

/// Whether process `pid` has one of the sockets `inodes` open.
pub fn owns_socket(pid: u32, inodes: &[u64]) -> bool {
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_string_lossy()
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| inodes.contains(&n))
        })
    })
}
