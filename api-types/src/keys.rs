//! SDK keys (`/v1/namespaces/{ns}/sdk-keys`) and admin tokens (`/v1/admin-tokens`).

use serde::{Deserialize, Serialize};

/// `{"name": "web"}`: the body creating a key or token; its name is the actor recorded in
/// history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NameSpec {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    )]
    pub name: String,
}

/// A new SDK key or admin token. The secret is shown only here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretCreated {
    pub name: String,
    /// The namespace an SDK key is bound to (null for an admin token).
    pub namespace: Option<String>,
    pub secret: String,
    pub revision: u64,
    /// For people: store the secret now.
    pub note: String,
}

/// A key or token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CredentialInfo {
    pub name: String,
    pub created_at_ms: u64,
    /// The token name that created it.
    pub created_by: String,
}

/// `GET …/{ns}/sdk-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SdkKeyList {
    pub namespace: String,
    pub sdk_keys: Vec<CredentialInfo>,
}

/// `GET /v1/admin-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdminTokenList {
    pub admin_tokens: Vec<CredentialInfo>,
    /// Names of the tokens given in the node's configuration (not revocable here).
    pub configured: Vec<String>,
}

/// The answer to revoking a key or token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revoked {
    /// The SDK key's namespace (absent for an admin token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub revoked: bool,
    pub revision: u64,
}
