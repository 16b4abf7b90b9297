//! The methods of `flwr.proto.Fleet` by name and gRPC path. Hardened node-auth tokens cover the
//! path, so the SuperNode that signs and the SuperLink that checks must spell it the same way:
//! both take it from here.

use std::fmt;

/// A method of `flwr.proto.Fleet`.
///
/// The declaration order is fixed (`rpc as usize` indexes per-method tables) and
/// [`FleetRpc::ALL`] lists the methods in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FleetRpc {
    /// `CreateNode`.
    CreateNode,
    /// `DeleteNode`.
    DeleteNode,
    /// `GetFab`.
    GetFab,
    /// `GetRun`.
    GetRun,
    /// `Ping`.
    Ping,
    /// `PullTaskIns`.
    PullTaskIns,
    /// `PushTaskRes`.
    PushTaskRes,
}

impl FleetRpc {
    /// Every method, in declaration order.
    pub const ALL: [Self; 7] = [
        Self::CreateNode,
        Self::DeleteNode,
        Self::GetFab,
        Self::GetRun,
        Self::Ping,
        Self::PullTaskIns,
        Self::PushTaskRes,
    ];

    /// The method names of [`FleetRpc::ALL`], in the same order.
    pub const NAMES: [&'static str; 7] = [
        "CreateNode",
        "DeleteNode",
        "GetFab",
        "GetRun",
        "Ping",
        "PullTaskIns",
        "PushTaskRes",
    ];

    /// The method's name, as in the `.proto` file.
    pub const fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The gRPC path (`/flwr.proto.Fleet/Ping`), which hardened tokens cover.
    pub fn path(self) -> &'static str {
        match self {
            Self::CreateNode => "/flwr.proto.Fleet/CreateNode",
            Self::DeleteNode => "/flwr.proto.Fleet/DeleteNode",
            Self::GetFab => "/flwr.proto.Fleet/GetFab",
            Self::GetRun => "/flwr.proto.Fleet/GetRun",
            Self::Ping => "/flwr.proto.Fleet/Ping",
            Self::PullTaskIns => "/flwr.proto.Fleet/PullTaskIns",
            Self::PushTaskRes => "/flwr.proto.Fleet/PushTaskRes",
        }
    }

    /// The method a request path names by its last segment (the router has already matched
    /// the service), or `None` for a name Fleet does not have.
    pub fn from_path(path: &str) -> Option<Self> {
        let name = path.rsplit('/').next()?;
        Self::ALL.into_iter().find(|rpc| rpc.name() == name)
    }
}

impl fmt::Display for FleetRpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_order_agree() {
        for (index, rpc) in FleetRpc::ALL.into_iter().enumerate() {
            assert_eq!(rpc as usize, index);
            let path = format!("/{}/{}", crate::fleet_server::SERVICE_NAME, rpc.name());
            assert_eq!(rpc.path(), path);
            assert_eq!(FleetRpc::from_path(rpc.path()), Some(rpc));
            assert_eq!(rpc.to_string(), rpc.name());
        }
        assert_eq!(FleetRpc::from_path("/flwr.proto.Fleet/Nope"), None);
        assert_eq!(FleetRpc::from_path(""), None);
    }
}
