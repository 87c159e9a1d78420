//! Numbers and addresses written as text by hand on the hot path (the
//! access log, X-Forwarded-For): `fmt` machinery would cost more than the
//! rest of drawbridge's work on a request.

use std::net::IpAddr;

/// Append the decimal digits of `n`.
pub fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Append the text form of `ip` to `out` (IPv4 without `fmt`: this runs
/// for every proxied request).
pub fn push_ip<B: Extend<u8>>(out: &mut B, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            out.extend(text[..n].iter().copied());
        }
        IpAddr::V6(v6) => out.extend(v6.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 99, 100, 65535, u64::MAX] {
            let mut buf = Vec::new();
            push_decimal(&mut buf, n);
            assert_eq!(buf, n.to_string().into_bytes());
        }
    }

    #[test]
    fn addresses() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "192.168.100.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([1, 1, 1, 1]));
            let mut buf = Vec::new();
            push_ip(&mut buf, ip);
            assert_eq!(buf, ip.to_string().into_bytes());
        }
    }
}
