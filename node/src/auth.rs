//! Who is calling, for every protocol the node serves (HTTP, the console, flagd sync): the
//! presented secret → [`Caller`], and what a caller may read. The HTTP extractors
//! (`api/extract.rs`) and the sync service only ask here, so roles can be added to `Caller`
//! without touching the handlers.

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::node::Node;

/// SHA-256 (hex) of a secret: what the replicated state stores for keys and tokens.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Who is calling: an admin (token name) or an SDK key bound to one namespace.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin(String),
    Sdk {
        ns: String,
        name: String,
        hash: String,
    },
}

impl Caller {
    /// The caller a presented secret (admin token or SDK key) names, for any protocol.
    pub fn of_secret(presented: &str, node: &Node) -> Result<Caller, ApiError> {
        if let Some(name) = Caller::configured_admin(presented, node) {
            return Ok(Caller::Admin(name));
        }
        // Stored secrets are looked up by their hash, so timing reveals nothing about them.
        let hash = hash_secret(presented);
        let state = node.state.read();
        if let Some(t) = state.admin_tokens().get(&hash) {
            return Ok(Caller::Admin(t.name.clone()));
        }
        if let Some(k) = state.sdk_keys().get(&hash) {
            return Ok(Caller::Sdk {
                ns: k.ns.clone(),
                name: k.name.clone(),
                hash,
            });
        }
        Err(ApiError::Unauthenticated)
    }

    /// May this caller read namespace `ns`?
    pub fn check_namespace(&self, ns: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin(_) => Ok(()),
            Caller::Sdk { ns: bound, .. } if bound == ns => Ok(()),
            Caller::Sdk { ns: bound, .. } => Err(ApiError::Forbidden(format!(
                "this SDK key is for namespace {bound:?}, not {ns:?}"
            ))),
        }
    }

    /// After a read barrier: the key must still exist at the revision the read reflects.
    pub fn check_still_valid(&self, node: &Node) -> Result<(), ApiError> {
        if self.still_valid(node) {
            Ok(())
        } else {
            Err(ApiError::Unauthenticated)
        }
    }

    /// The name of the configured admin token `presented` is, if it is one.
    fn configured_admin(presented: &str, node: &Node) -> Option<String> {
        node.config
            .admin_tokens
            .iter()
            .find(|(_, token)| {
                !token.is_empty() && bool::from(token.as_bytes().ct_eq(presented.as_bytes()))
            })
            .map(|(name, _)| name.clone())
    }

    /// The admin token `presented` names, if it is one (configured or created through the API).
    pub fn admin_name(presented: &str, node: &Node) -> Option<String> {
        Caller::configured_admin(presented, node).or_else(|| {
            let state = node.state.read();
            state
                .admin_tokens()
                .get(&hash_secret(presented))
                .map(|t| t.name.clone())
        })
    }

    /// Is the admin token whose SHA-256 is `credential` still an admin token called `name`
    /// (configured, or created through the API and not revoked)? A token revoked and created
    /// again under the same name, or a configured secret that changed, is another credential.
    pub fn admin_credential_valid(name: &str, credential: &str, node: &Node) -> bool {
        let configured = node.config.admin_tokens.iter().any(|(n, token)| {
            n == name
                && !token.is_empty()
                && bool::from(hash_secret(token).as_bytes().ct_eq(credential.as_bytes()))
        });
        configured
            || node
                .state
                .read()
                .admin_tokens()
                .get(credential)
                .is_some_and(|t| t.name == name)
    }

    /// False once an SDK key has been revoked (as this node's state knows).
    pub fn still_valid(&self, node: &Node) -> bool {
        match self {
            Caller::Admin(_) => true,
            Caller::Sdk { hash, .. } => node.state.read().sdk_keys().contains_key(hash),
        }
    }
}

/// The secret of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}
