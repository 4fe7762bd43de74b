//! The flag editor's form: reading it into a flag definition (with a fault path for every field
//! that does not parse), filling it from a definition, and the rule builder for the common
//! targeting cases. Pure functions, unit-tested here; the definition is validated afterwards by
//! the same `flagstaff_flags::validate_flag` the API uses.

use serde::Serialize;
use serde_json::{json, Map, Value};

/// A fault in the form: the JSON path it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FormFault {
    pub path: String,
    pub message: String,
}

fn fault(path: impl Into<String>, message: impl Into<String>) -> FormFault {
    FormFault {
        path: path.into(),
        message: message.into(),
    }
}

/// The type every variant value of a flag has.
pub const VALUE_TYPES: &[&str] = &["boolean", "string", "number", "object"];

/// One variant row of the editor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VariantRow {
    pub name: String,
    pub value: String,
}

/// The rule builder's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleBuilder {
    /// `in_list`, `starts_with`, `ends_with`, `sem_ver` or `split`.
    pub kind: String,
    pub attribute: String,
    /// For `sem_ver`: `=`, `!=`, `<`, `<=`, `>`, `>=`, `^` or `~`.
    pub op: String,
    /// Comma-separated values (a version for `sem_ver`).
    pub values: String,
    pub then_variant: String,
    pub else_variant: String,
    /// For `split`: `variant=weight` pairs, comma-separated.
    pub split: String,
}

/// Everything the flag editor posts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FlagForm {
    /// The flag's key (only editable on a new flag).
    pub key: String,
    /// The version the editor was loaded at (`If-Match`); empty for a new flag.
    pub version: String,
    pub description: String,
    /// Comma-separated.
    pub tags: String,
    pub state: String,
    pub value_type: String,
    pub variants: Vec<VariantRow>,
    pub default_variant: String,
    /// The definition said `"defaultVariant": null` (kept so that saving it unchanged changes
    /// nothing; an empty default is otherwise left out).
    pub null_default: bool,
    /// JsonLogic as text; empty for none.
    pub targeting: String,
    /// The flag's metadata as JSON text, kept as it was (not edited here).
    pub metadata: String,
    /// `fractionalAlgorithm`: empty (absent, v2), `v2` or `v3`.
    pub fractional_algorithm: String,
    /// `experiment` as JSON text; empty for none.
    pub experiment: String,
    /// Store what flagd accepts although Flagstaff refuses it by default (the API's
    /// `?flagd_semantics=true`).
    pub flagd_semantics: bool,
    pub builder: RuleBuilder,
    /// `save`, `validate` or `build`.
    pub action: String,
}

impl FlagForm {
    /// Reads the posted fields; repeated `variant_name`/`variant_value` fields are the rows.
    pub fn from_pairs(pairs: &[(String, String)]) -> FlagForm {
        let mut f = FlagForm::default();
        let mut names = Vec::new();
        let mut values = Vec::new();
        for (k, v) in pairs {
            let v = v.clone();
            match k.as_str() {
                "key" => f.key = v.trim().to_string(),
                "version" => f.version = v.trim().to_string(),
                "description" => f.description = v,
                "tags" => f.tags = v,
                "state" => f.state = v,
                "value_type" => f.value_type = v,
                "variant_name" => names.push(v.trim().to_string()),
                "variant_value" => values.push(v),
                "default_variant" => f.default_variant = v.trim().to_string(),
                "null_default" => f.null_default = v == "1",
                "targeting" => f.targeting = v,
                "metadata" => f.metadata = v,
                "experiment" => f.experiment = v,
                "fractional_algorithm" => f.fractional_algorithm = v.trim().to_string(),
                "flagd_semantics" => f.flagd_semantics = v == "1",
                "rb_kind" => f.builder.kind = v,
                "rb_attribute" => f.builder.attribute = v.trim().to_string(),
                "rb_op" => f.builder.op = v,
                "rb_values" => f.builder.values = v,
                "rb_then" => f.builder.then_variant = v.trim().to_string(),
                "rb_else" => f.builder.else_variant = v.trim().to_string(),
                "rb_split" => f.builder.split = v,
                "action" => f.action = v,
                _ => {}
            }
        }
        values.resize(names.len(), String::new());
        f.variants = names
            .into_iter()
            .zip(values)
            .filter(|(n, v)| !n.is_empty() || !v.trim().is_empty())
            .map(|(name, value)| VariantRow { name, value })
            .collect();
        f
    }

    /// The editor's fields for an existing definition (or a fresh boolean flag for `None`).
    pub fn from_definition(key: &str, version: Option<u64>, def: Option<&Value>) -> FlagForm {
        let Some(def) = def else {
            return FlagForm {
                key: key.to_string(),
                state: "ENABLED".into(),
                value_type: "boolean".into(),
                variants: vec![
                    VariantRow {
                        name: "on".into(),
                        value: "true".into(),
                    },
                    VariantRow {
                        name: "off".into(),
                        value: "false".into(),
                    },
                ],
                default_variant: "off".into(),
                ..FlagForm::default()
            };
        };
        let variants: Vec<(String, Value)> = def["variants"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let value_type = variants
            .first()
            .map(|(_, v)| type_of(v))
            .unwrap_or("boolean")
            .to_string();
        FlagForm {
            key: key.to_string(),
            version: version.map(|v| v.to_string()).unwrap_or_default(),
            description: def["description"].as_str().unwrap_or_default().to_string(),
            tags: def["tags"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
            state: def["state"].as_str().unwrap_or("ENABLED").to_string(),
            fractional_algorithm: def["fractionalAlgorithm"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            value_type,
            variants: variants
                .into_iter()
                .map(|(name, v)| VariantRow {
                    name,
                    value: value_text(&v),
                })
                .collect(),
            default_variant: def["defaultVariant"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            null_default: def.get("defaultVariant").is_some_and(Value::is_null),
            targeting: match &def["targeting"] {
                Value::Null => String::new(),
                t => pretty(t),
            },
            metadata: match &def["metadata"] {
                Value::Null => String::new(),
                m => m.to_string(),
            },
            experiment: match &def["experiment"] {
                Value::Null => String::new(),
                e => e.to_string(),
            },
            ..FlagForm::default()
        }
    }

    /// The flag definition the form describes, or every field that does not parse.
    pub fn to_definition(&self) -> Result<Value, Vec<FormFault>> {
        let mut faults = Vec::new();
        let mut def = Map::new();
        match self.state.as_str() {
            "ENABLED" | "DISABLED" => {
                def.insert("state".into(), json!(self.state));
            }
            other => faults.push(fault(
                "state",
                format!("{other:?} is not ENABLED or DISABLED"),
            )),
        }
        let mut variants = Map::new();
        for row in &self.variants {
            let path = format!("variants.{}", row.name);
            if row.name.is_empty() {
                faults.push(fault("variants", "a variant has a value but no name"));
                continue;
            }
            if variants.contains_key(&row.name) {
                faults.push(fault(path, "this variant name is used twice"));
                continue;
            }
            match parse_value(&self.value_type, &row.value) {
                Ok(v) => {
                    variants.insert(row.name.clone(), v);
                }
                Err(message) => faults.push(fault(path, message)),
            }
        }
        def.insert("variants".into(), Value::Object(variants));
        if !self.default_variant.is_empty() {
            def.insert("defaultVariant".into(), json!(self.default_variant));
        } else if self.null_default {
            def.insert("defaultVariant".into(), Value::Null);
        }
        if !self.targeting.trim().is_empty() {
            match serde_json::from_str::<Value>(&self.targeting) {
                Ok(t) => {
                    def.insert("targeting".into(), t);
                }
                Err(e) => faults.push(fault("targeting", format!("not valid JSON: {e}"))),
            }
        }
        if !self.metadata.trim().is_empty() {
            match serde_json::from_str::<Value>(&self.metadata) {
                Ok(m) => {
                    def.insert("metadata".into(), m);
                }
                Err(e) => faults.push(fault("metadata", format!("not valid JSON: {e}"))),
            }
        }
        if !self.experiment.trim().is_empty() {
            match serde_json::from_str::<Value>(&self.experiment) {
                Ok(e) => {
                    def.insert("experiment".into(), e);
                }
                Err(e) => faults.push(fault("experiment", format!("not valid JSON: {e}"))),
            }
        }
        if !self.description.trim().is_empty() {
            def.insert("description".into(), json!(self.description));
        }
        let tags: Vec<&str> = self
            .tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        if !tags.is_empty() {
            def.insert("tags".into(), json!(tags));
        }
        match self.fractional_algorithm.as_str() {
            "" => {}
            "v2" | "v3" => {
                def.insert(
                    "fractionalAlgorithm".into(),
                    json!(self.fractional_algorithm),
                );
            }
            other => faults.push(fault(
                "fractionalAlgorithm",
                format!("{other:?} is not v2 or v3"),
            )),
        }
        if faults.is_empty() {
            Ok(Value::Object(def))
        } else {
            Err(faults)
        }
    }

    /// Replaces the targeting with what the rule builder describes.
    pub fn apply_builder(&mut self) -> Result<(), Vec<FormFault>> {
        let names: Vec<&str> = self.variants.iter().map(|r| r.name.as_str()).collect();
        let rule = self.builder.rule(&names)?;
        self.targeting = pretty(&rule);
        Ok(())
    }
}

/// A value's type as the editor names it.
pub fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        _ => "object",
    }
}

/// How the editor shows a variant value: strings raw, the rest as JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(_) | Value::Array(_) => pretty(v),
        other => other.to_string(),
    }
}

pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A variant value typed in the editor, read as `value_type`.
fn parse_value(value_type: &str, text: &str) -> Result<Value, String> {
    match value_type {
        "boolean" => match text.trim() {
            "true" => Ok(json!(true)),
            "false" => Ok(json!(false)),
            other => Err(format!("{other:?} is not true or false")),
        },
        "string" => Ok(json!(text)),
        "number" => text
            .trim()
            .parse::<serde_json::Number>()
            .map(Value::Number)
            .map_err(|_| format!("{:?} is not a number", text.trim())),
        "object" => match serde_json::from_str::<Value>(text) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err("must be a JSON object, like {\"retries\": 3}".into()),
            Err(e) => Err(format!("not valid JSON: {e}")),
        },
        other => Err(format!(
            "value type {other:?} is not one of {}",
            VALUE_TYPES.join(", ")
        )),
    }
}

/// The semantic-version comparisons flagd's `sem_ver` knows.
pub const SEMVER_OPS: &[&str] = &["=", "!=", "<", "<=", ">", ">=", "^", "~"];

impl RuleBuilder {
    /// The JsonLogic rule for the builder's fields; `variants` are the flag's variant names.
    pub fn rule(&self, variants: &[&str]) -> Result<Value, Vec<FormFault>> {
        let mut faults = Vec::new();
        let known = |path: &str, v: &str, faults: &mut Vec<FormFault>| {
            if !variants.contains(&v) {
                faults.push(fault(
                    format!("rule builder.{path}"),
                    format!(
                        "{v:?} is not one of this flag's variants ({})",
                        variants.join(", ")
                    ),
                ));
            }
        };
        let list: Vec<&str> = self
            .values
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let attribute = || json!({"var": self.attribute});
        let condition = match self.kind.as_str() {
            "split" => None,
            "in_list" => Some(json!({"in": [attribute(), list]})),
            "starts_with" | "ends_with" => {
                let tests: Vec<Value> = list
                    .iter()
                    .map(|v| json!({ self.kind.clone(): [attribute(), v] }))
                    .collect();
                Some(if tests.len() == 1 {
                    tests[0].clone()
                } else {
                    json!({ "or": tests })
                })
            }
            "sem_ver" => {
                if !SEMVER_OPS.contains(&self.op.as_str()) {
                    faults.push(fault(
                        "rule builder.op",
                        format!("{:?} is not one of {}", self.op, SEMVER_OPS.join(" ")),
                    ));
                }
                if list.len() != 1 {
                    faults.push(fault(
                        "rule builder.values",
                        "a version comparison takes exactly one version, like 2.1.0",
                    ));
                }
                Some(json!({"sem_ver": [attribute(), self.op, list.first().unwrap_or(&"")]}))
            }
            other => {
                faults.push(fault(
                    "rule builder.kind",
                    format!("{other:?} is not a rule the builder knows"),
                ));
                None
            }
        };
        let rule = if self.kind == "split" {
            let mut parts = Vec::new();
            if !self.attribute.is_empty() {
                parts.push(attribute());
            }
            for (i, pair) in self.split.split(',').map(str::trim).enumerate() {
                if pair.is_empty() {
                    continue;
                }
                let (name, weight) = pair.split_once('=').unwrap_or((pair, ""));
                let (name, weight) = (name.trim(), weight.trim());
                known(&format!("split[{i}]"), name, &mut faults);
                match weight.parse::<u32>() {
                    Ok(w) => parts.push(json!([name, w])),
                    Err(_) => faults.push(fault(
                        format!("rule builder.split[{i}]"),
                        format!("{pair:?} is not variant=weight, like on=50"),
                    )),
                }
            }
            if parts.len() < 2 + usize::from(!self.attribute.is_empty()) {
                faults.push(fault(
                    "rule builder.split",
                    "a split needs at least two variant=weight pairs, like on=50, off=50",
                ));
            }
            json!({ "fractional": parts })
        } else {
            if self.attribute.is_empty() {
                faults.push(fault(
                    "rule builder.attribute",
                    "name the context attribute to test, like email",
                ));
            }
            if list.is_empty() {
                faults.push(fault("rule builder.values", "give at least one value"));
            }
            known("then", &self.then_variant, &mut faults);
            known("else", &self.else_variant, &mut faults);
            json!({"if": [condition, self.then_variant, self.else_variant]})
        };
        if faults.is_empty() {
            Ok(rule)
        } else {
            Err(faults)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flagstaff_flags::{Context, FlagSet};

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn form(extra: &[(&str, &str)]) -> FlagForm {
        let mut p = vec![
            ("state", "ENABLED"),
            ("value_type", "string"),
            ("variant_name", "a"),
            ("variant_value", "alpha"),
            ("variant_name", "b"),
            ("variant_value", "beta"),
            ("variant_name", ""),
            ("variant_value", ""),
            ("default_variant", "a"),
        ];
        p.extend_from_slice(extra);
        FlagForm::from_pairs(&pairs(&p))
    }

    /// Evaluates `def` for `ctx` with the same evaluator as the SDK.
    fn evaluate(def: &Value, ctx: Value) -> Value {
        let doc = json!({"flags": {"f": def}});
        let set = FlagSet::from_document(&doc).expect("valid document");
        let ctx = Context::from_json(&ctx, 0).expect("context");
        set.resolve("f", &ctx).value.cloned().unwrap_or(Value::Null)
    }

    #[test]
    fn a_form_becomes_a_valid_definition_and_back() {
        let f = form(&[("description", "Banner"), ("tags", "ui, , web")]);
        let def = f.to_definition().unwrap();
        assert_eq!(
            def,
            json!({"state":"ENABLED","variants":{"a":"alpha","b":"beta"},"defaultVariant":"a",
                   "description":"Banner","tags":["ui","web"]})
        );
        flagstaff_flags::validate_flag(&def).unwrap();
        let back = FlagForm::from_definition("f", Some(7), Some(&def));
        assert_eq!(back.to_definition().unwrap(), def);
        assert_eq!(back.version, "7");
        assert_eq!(back.value_type, "string");
    }

    #[test]
    fn typed_values_and_their_faults_have_paths() {
        let mut f = form(&[]);
        f.value_type = "number".into();
        let faults = f.to_definition().unwrap_err();
        assert_eq!(faults[0].path, "variants.a");
        assert!(faults[0].message.contains("not a number"), "{faults:?}");
        f.value_type = "object".into();
        f.variants[0].value = r#"{"retries": 3, "hosts": ["x"]}"#.into();
        f.variants[1].value = "[1]".into();
        let faults = f.to_definition().unwrap_err();
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].path, "variants.b");
        f.targeting = "{\"if\": [".into();
        let faults = f.to_definition().unwrap_err();
        assert!(faults.iter().any(|x| x.path == "targeting"), "{faults:?}");
    }

    #[test]
    fn saving_an_unchanged_editor_writes_the_same_definition() {
        for def in [
            json!({"state":"ENABLED","variants":{"a":"two\nlines ","b":""},"defaultVariant":null}),
            json!({"state":"DISABLED","variants":{"a":1.5,"b":-2},"description":" spaced ","tags":["x"]}),
            json!({"state":"ENABLED","variants":{"cfg":{"retries":3,"hosts":["a"]}},"defaultVariant":"cfg",
                   "targeting":{"if":[{"in":[{"var":"plan"},["pro"]]},"cfg",null]}}),
            json!({"state":"ENABLED","variants":{"a":"a","b":"b"},"fractionalAlgorithm":"v3",
                   "targeting":{"fractional":[["a",1],["b",1]]}}),
        ] {
            let f = FlagForm::from_definition("f", Some(3), Some(&def));
            let mut pairs = vec![
                ("state".to_string(), f.state.clone()),
                ("value_type".to_string(), f.value_type.clone()),
                ("description".to_string(), f.description.clone()),
                ("tags".to_string(), f.tags.clone()),
                ("default_variant".to_string(), f.default_variant.clone()),
                ("targeting".to_string(), f.targeting.clone()),
                ("metadata".to_string(), f.metadata.clone()),
                ("experiment".to_string(), f.experiment.clone()),
                (
                    "fractional_algorithm".to_string(),
                    f.fractional_algorithm.clone(),
                ),
            ];
            if f.null_default {
                pairs.push(("null_default".into(), "1".into()));
            }
            for v in &f.variants {
                pairs.push(("variant_name".into(), v.name.clone()));
                pairs.push(("variant_value".into(), v.value.clone()));
            }
            let posted = FlagForm::from_pairs(&pairs);
            assert_eq!(posted.to_definition().unwrap(), def);
        }
    }

    #[test]
    fn an_experiment_survives_an_edit() {
        let def = json!({"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off",
                         "experiment":{"control":"off","metrics":["signup"]}});
        let f = FlagForm::from_definition("f", Some(1), Some(&def));
        assert_eq!(f.to_definition().unwrap(), def);
    }

    #[test]
    fn metadata_survives_an_edit() {
        let def = json!({"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on",
                         "metadata":{"owner":"team-a"}});
        let f = FlagForm::from_definition("f", Some(1), Some(&def));
        assert_eq!(f.to_definition().unwrap(), def);
    }

    fn builder(kind: &str, attribute: &str, op: &str, values: &str, split: &str) -> RuleBuilder {
        RuleBuilder {
            kind: kind.into(),
            attribute: attribute.into(),
            op: op.into(),
            values: values.into(),
            then_variant: "b".into(),
            else_variant: "a".into(),
            split: split.into(),
        }
    }

    #[test]
    fn each_builder_rule_validates_and_evaluates_as_meant() {
        let cases = [
            (
                builder("in_list", "plan", "", "pro, enterprise", ""),
                json!({"plan": "pro"}),
                json!({"plan": "free"}),
            ),
            (
                builder("starts_with", "email", "", "admin@", ""),
                json!({"email": "admin@x.io"}),
                json!({"email": "bob@x.io"}),
            ),
            (
                builder("ends_with", "email", "", "@example.com, @example.org", ""),
                json!({"email": "a@example.org"}),
                json!({"email": "a@x.io"}),
            ),
            (
                builder("sem_ver", "version", ">=", "2.1.0", ""),
                json!({"version": "2.3.0"}),
                json!({"version": "2.0.9"}),
            ),
        ];
        for (b, yes, no) in cases {
            let mut f = form(&[]);
            f.builder = b.clone();
            f.apply_builder().unwrap_or_else(|e| panic!("{b:?}: {e:?}"));
            let def = f.to_definition().unwrap();
            flagstaff_flags::validate_flag(&def).unwrap_or_else(|e| panic!("{b:?}: {e:?}"));
            assert_eq!(evaluate(&def, yes), json!("beta"), "{b:?}");
            assert_eq!(evaluate(&def, no), json!("alpha"), "{b:?}");
        }
    }

    #[test]
    fn a_split_divides_users_by_weight() {
        for attribute in ["", "userId"] {
            let mut f = form(&[]);
            f.builder = builder("split", attribute, "", "", "a=50, b=50");
            f.apply_builder().unwrap();
            let def = f.to_definition().unwrap();
            flagstaff_flags::validate_flag(&def).unwrap();
            let mut b_count = 0;
            for i in 0..1000 {
                let ctx = json!({"targetingKey": format!("user-{i}"), "userId": format!("u{i}")});
                if evaluate(&def, ctx) == json!("beta") {
                    b_count += 1;
                }
            }
            assert!((400..600).contains(&b_count), "{attribute:?}: {b_count}");
        }
    }

    #[test]
    fn builder_mistakes_are_faults_with_paths() {
        let b = builder("sem_ver", "", "≈", "1, 2", "");
        let paths: Vec<String> = b
            .rule(&["a", "b"])
            .unwrap_err()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert!(paths.contains(&"rule builder.op".to_string()), "{paths:?}");
        assert!(
            paths.contains(&"rule builder.values".to_string()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"rule builder.attribute".to_string()),
            "{paths:?}"
        );
        let mut b = builder("split", "", "", "a=50, c=x", "");
        b.split = "a=50, c=x".into();
        let faults = b.rule(&["a", "b"]).unwrap_err();
        assert!(
            faults.iter().any(|f| f.path == "rule builder.split[1]"),
            "{faults:?}"
        );
        let mut b = builder("in_list", "plan", "", "pro", "");
        b.then_variant = "zzz".into();
        let faults = b.rule(&["a", "b"]).unwrap_err();
        assert_eq!(faults[0].path, "rule builder.then");
        assert!(builder("nope", "x", "", "1", "").rule(&["a", "b"]).is_err());
    }
}
