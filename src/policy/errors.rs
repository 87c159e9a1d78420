//! What status a failed proxy attempt answers (CONTRACT section 3): 503
//! when no server could take the request, 502 when the one that took it
//! failed, 504 when it did not answer within `read_timeout`, 400 for a
//! malformed request, 408 for a client silent while sending its body, and
//! nothing when the client itself went away.

use pingora_error::{ErrorSource, ErrorType};

/// How a failure is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The site's error page with this status (502, 503 or 504).
    ErrorPage(u16),
    /// Pingora's bare answer with this status (a client's fault, or ours).
    Bare(u16),
    /// Nothing: the client is gone or cannot be written to.
    Silent,
}

/// The answer to a failure of type `etype` from `source`.
pub fn failure(etype: &ErrorType, source: &ErrorSource) -> Failure {
    let code = match etype {
        ErrorType::HTTPStatus(c) => *c,
        _ => match source {
            ErrorSource::Upstream => match etype {
                // The server took the request but did not answer in time:
                // a gateway timeout, as HAProxy's `timeout server` gives.
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
                _ => 502,
            },
            ErrorSource::Downstream => match etype {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                    return Failure::Silent
                }
                // The client fell silent while sending its body
                // (`client_body_timeout`).
                ErrorType::ReadTimedout => 408,
                _ => 400,
            },
            _ => 500,
        },
    };
    match code {
        0 => Failure::Silent,
        502..=504 => Failure::ErrorPage(match etype {
            // Connect failures on every server tried: nobody could answer.
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError => 503,
            _ => code,
        }),
        c => Failure::Bare(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorSource::*;
    use ErrorType::*;

    #[test]
    fn statuses_by_cause() {
        // Connect failures: no server could take it.
        for e in [
            ConnectTimedout,
            ConnectRefused,
            ConnectNoRoute,
            ConnectError,
        ] {
            assert_eq!(failure(&e, &Upstream), Failure::ErrorPage(503), "{e:?}");
        }
        assert_eq!(failure(&ReadTimedout, &Upstream), Failure::ErrorPage(504));
        assert_eq!(failure(&WriteTimedout, &Upstream), Failure::ErrorPage(504));
        assert_eq!(failure(&ReadError, &Upstream), Failure::ErrorPage(502));
        assert_eq!(
            failure(&InvalidHTTPHeader, &Upstream),
            Failure::ErrorPage(502)
        );
        assert_eq!(
            failure(&HTTPStatus(503), &Internal),
            Failure::ErrorPage(503)
        );
        assert_eq!(failure(&HTTPStatus(404), &Internal), Failure::Bare(404));
        assert_eq!(failure(&InvalidHTTPHeader, &Downstream), Failure::Bare(400));
        assert_eq!(failure(&ReadTimedout, &Downstream), Failure::Bare(408));
        for e in [WriteError, ReadError, ConnectionClosed] {
            assert_eq!(failure(&e, &Downstream), Failure::Silent, "{e:?}");
        }
        assert_eq!(failure(&InternalError, &Internal), Failure::Bare(500));
    }
}
