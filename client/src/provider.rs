//! An OpenFeature provider (`open-feature` crate 0.3) backed by a [`Client`].
//!
//! Reasons, error codes and metadata map one to one; details the OpenFeature types have no field
//! for travel as flag metadata: `flagstaff.source`, `flagstaff.revision`, `flagstaff.age_ms`,
//! `flagstaff.stale`. The `open-feature` crate 0.3 has no event API, so provider events
//! (`PROVIDER_READY`, `PROVIDER_STALE`, `PROVIDER_ERROR`, `PROVIDER_CONFIGURATION_CHANGED`) are
//! offered through [`FlagstaffProvider::on_provider_event`]. Nor has its `FeatureProvider` a
//! tracking hook: record A/B conversions with `provider.client().track(…)`
//! ([`Client::track`]); evaluations through the provider count exposures like any other.

use std::time::Duration;

use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, EvaluationError as OfError,
    EvaluationErrorCode, EvaluationReason, EvaluationResult, FlagMetadata, FlagMetadataValue,
    StructValue,
};
use serde_json::{Map, Value};

use crate::client::{context, Client, Details};
use crate::events::{Event, Status};
use flagstaff_flags::{Context, ErrorCode, Reason};

/// OpenFeature's provider event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderEvent {
    /// `PROVIDER_READY`
    Ready,
    /// `PROVIDER_STALE`
    Stale,
    /// `PROVIDER_ERROR`
    Error,
    /// `PROVIDER_CONFIGURATION_CHANGED`
    ConfigurationChanged,
}

/// The provider. `initialize` never fails and by default does not wait (the SDK never blocks
/// the application): it returns at once and the status says what the client has. Opt in to a
/// bounded wait for fresh data with [`FlagstaffProvider::with_init_timeout`].
pub struct FlagstaffProvider {
    client: Client,
    metadata: ProviderMetadata,
    init_timeout: Duration,
}

impl FlagstaffProvider {
    /// A provider for `client`; `initialize` does not wait.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            metadata: ProviderMetadata::new("flagstaff"),
            init_timeout: Duration::ZERO,
        }
    }

    /// How long `initialize` (awaited by OpenFeature's `set_provider`) may wait for fresh data.
    pub fn with_init_timeout(mut self, d: Duration) -> Self {
        self.init_timeout = d;
        self
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Calls `f` with OpenFeature's event name and the flags changed (for
    /// `PROVIDER_CONFIGURATION_CHANGED`) or a message (for `PROVIDER_ERROR`).
    pub fn on_provider_event(&self, f: impl Fn(ProviderEvent, &[String]) + Send + Sync + 'static) {
        self.client.on_event(move |e| match e {
            Event::Ready { .. } => f(ProviderEvent::Ready, &[]),
            Event::Stale { .. } => f(ProviderEvent::Stale, &[]),
            Event::Error {
                fatal: true,
                message,
                ..
            } => f(ProviderEvent::Error, std::slice::from_ref(message)),
            Event::ConfigurationChanged { flags, .. } => {
                f(ProviderEvent::ConfigurationChanged, flags)
            }
            _ => {}
        });
    }
}

/// Converts an OpenFeature context to a Flagstaff one (evaluated now).
pub fn to_context(ctx: &EvaluationContext) -> Context {
    let mut out = context();
    for (k, v) in &ctx.custom_fields {
        let json = match v {
            EvaluationContextFieldValue::Bool(b) => Value::Bool(*b),
            EvaluationContextFieldValue::Int(i) => Value::from(*i),
            EvaluationContextFieldValue::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            EvaluationContextFieldValue::String(s) => Value::String(s.clone()),
            // As Unix seconds, the unit `$flagd.timestamp` uses, so rules can compare them.
            EvaluationContextFieldValue::DateTime(t) => Value::from(t.unix_timestamp()),
            EvaluationContextFieldValue::Struct(any) => match any.downcast_ref::<Value>() {
                Some(v) => v.clone(),
                None => continue,
            },
        };
        out.attributes_mut().insert(k.clone(), json);
    }
    if let Some(tk) = &ctx.targeting_key {
        out.attributes_mut()
            .insert("targetingKey".into(), Value::String(tk.clone()));
    }
    out
}

/// JSON → OpenFeature value. OpenFeature has no null: null members and elements are left
/// out. Integers beyond `i64` become floats.
fn to_of_value(v: &Value) -> Option<open_feature::Value> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => open_feature::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => open_feature::Value::Int(i),
            None => open_feature::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => open_feature::Value::String(s.clone()),
        Value::Array(a) => open_feature::Value::Array(a.iter().filter_map(to_of_value).collect()),
        Value::Object(o) => {
            let mut s = StructValue::default();
            for (k, v) in o {
                if let Some(v) = to_of_value(v) {
                    s.add_field(k, v);
                }
            }
            open_feature::Value::Struct(s)
        }
    })
}

fn reason(r: Reason) -> EvaluationReason {
    match r {
        Reason::Static => EvaluationReason::Static,
        Reason::TargetingMatch => EvaluationReason::TargetingMatch,
        Reason::Split => EvaluationReason::Split,
        Reason::Default => EvaluationReason::Default,
        Reason::Disabled => EvaluationReason::Disabled,
        Reason::Cached => EvaluationReason::Cached,
        Reason::Stale => EvaluationReason::Other("STALE".into()),
        Reason::Unknown => EvaluationReason::Unknown,
        Reason::Error => EvaluationReason::Error,
    }
}

fn error_code(c: ErrorCode) -> EvaluationErrorCode {
    match c {
        ErrorCode::FlagNotFound => EvaluationErrorCode::FlagNotFound,
        ErrorCode::TypeMismatch => EvaluationErrorCode::TypeMismatch,
        ErrorCode::ParseError => EvaluationErrorCode::ParseError,
        ErrorCode::TargetingKeyMissing => EvaluationErrorCode::TargetingKeyMissing,
        ErrorCode::InvalidContext => EvaluationErrorCode::InvalidContext,
        ErrorCode::ProviderNotReady => EvaluationErrorCode::ProviderNotReady,
        ErrorCode::ProviderFatal => EvaluationErrorCode::General("PROVIDER_FATAL".into()),
        ErrorCode::General => EvaluationErrorCode::General("GENERAL".into()),
    }
}

fn metadata<T>(d: &Details<T>) -> FlagMetadata {
    let mut m = FlagMetadata::default();
    for (k, v) in &d.metadata {
        match v {
            Value::Bool(b) => m.add_value(k, *b),
            Value::String(s) => m.add_value(k, s.as_str()),
            Value::Number(n) => match n.as_i64() {
                Some(i) => m.add_value(k, i),
                None => m.add_value(k, FlagMetadataValue::Float(n.as_f64().unwrap_or(0.0))),
            },
            _ => {}
        }
    }
    m.add_value("flagstaff.source", d.source.as_str());
    if let Some(r) = d.revision {
        m.add_value("flagstaff.revision", r.min(i64::MAX as u64) as i64);
    }
    if let Some(a) = d.age {
        m.add_value(
            "flagstaff.age_ms",
            a.as_millis().min(i64::MAX as u128) as i64,
        );
    }
    m.add_value("flagstaff.stale", d.stale);
    m
}

fn resolve<T, U>(
    d: Details<T>,
    convert: impl FnOnce(T) -> U,
) -> EvaluationResult<ResolutionDetails<U>> {
    if let Some(e) = &d.error {
        // OpenFeature's client turns an error into the caller's default with reason ERROR.
        return Err(OfError {
            code: error_code(e.code),
            message: Some(e.message.clone()),
        });
    }
    let flag_metadata = metadata(&d);
    Ok(ResolutionDetails {
        variant: d.variant.clone(),
        reason: Some(reason(d.reason)),
        flag_metadata: Some(flag_metadata),
        value: convert(d.value),
    })
}

#[open_feature::async_trait]
impl FeatureProvider for FlagstaffProvider {
    async fn initialize(&mut self, _context: &EvaluationContext) {
        if !self.init_timeout.is_zero() {
            let _ = self.client.wait_ready(self.init_timeout).await;
        }
    }

    fn status(&self) -> ProviderStatus {
        match self.client.status() {
            Status::NotReady => ProviderStatus::NotReady,
            Status::Ready => ProviderStatus::Ready,
            Status::Stale => ProviderStatus::STALE,
            Status::Error => ProviderStatus::Error,
        }
    }

    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        resolve(
            self.client.bool_details(flag_key, &to_context(ctx), false),
            |v| v,
        )
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        resolve(
            self.client.i64_details(flag_key, &to_context(ctx), 0),
            |v| v,
        )
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        resolve(
            self.client.f64_details(flag_key, &to_context(ctx), 0.0),
            |v| v,
        )
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        resolve(
            self.client.string_details(flag_key, &to_context(ctx), ""),
            |v| v,
        )
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        let d = self
            .client
            .object_details(flag_key, &to_context(ctx), &Value::Object(Map::new()));
        let converted = match to_of_value(&d.value) {
            Some(open_feature::Value::Struct(s)) => s,
            _ => StructValue::default(), // `object` only ever yields objects
        };
        resolve(d, |_| converted)
    }
}
