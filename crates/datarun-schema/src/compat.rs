//! Schema compatibility, per the Avro specification's schema-resolution rules: can data
//! written with one schema be read with another? A registry's compatibility modes
//! (Confluent's names) are this one question asked in one or both directions, against
//! the latest version or every earlier one.
//!
//! Resolution follows the specification ("Schema Resolution"): primitives match or are
//! promoted (int → long, float, double; long → float, double; float → double; string ↔
//! bytes); records match by unqualified name or a reader alias, their fields by name or a
//! reader field alias, and a reader field the writer lacks needs a default; enums need
//! every writer symbol, or a reader default; fixed types need the same size; arrays and
//! maps resolve their items and values; every branch of a writer union must be readable,
//! and a reader union must hold a branch for the writer's type. Logical types are judged
//! by the type they annotate, as the specification's resolution does (a `date` reads an
//! `int`), except decimals, whose scale must agree.

use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::Schema;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

/// A registry's compatibility mode (Confluent's names and meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compatibility {
    /// A new version reads data written with the latest one.
    #[default]
    Backward,
    /// A new version reads data written with every earlier one.
    BackwardTransitive,
    /// The latest version reads data written with a new one.
    Forward,
    /// Every earlier version reads data written with a new one.
    ForwardTransitive,
    /// Backward and forward, against the latest version.
    Full,
    /// Backward and forward, against every earlier version.
    FullTransitive,
    /// No check.
    None,
}

impl Compatibility {
    pub const ALL: [Compatibility; 7] = [
        Compatibility::Backward,
        Compatibility::BackwardTransitive,
        Compatibility::Forward,
        Compatibility::ForwardTransitive,
        Compatibility::Full,
        Compatibility::FullTransitive,
        Compatibility::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
            Compatibility::None => "NONE",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == text)
    }

    /// True when a new version is checked against every earlier version, not only the
    /// latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of rule a pair of schemas breaks (the names Avro's and Confluent's
/// compatibility reports use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncompatibilityKind {
    TypeMismatch,
    NameMismatch,
    ReaderFieldMissingDefaultValue,
    MissingEnumSymbols,
    MissingUnionBranch,
    FixedSizeMismatch,
}

impl IncompatibilityKind {
    pub fn code(self) -> &'static str {
        match self {
            IncompatibilityKind::TypeMismatch => "TYPE_MISMATCH",
            IncompatibilityKind::NameMismatch => "NAME_MISMATCH",
            IncompatibilityKind::ReaderFieldMissingDefaultValue => {
                "READER_FIELD_MISSING_DEFAULT_VALUE"
            }
            IncompatibilityKind::MissingEnumSymbols => "MISSING_ENUM_SYMBOLS",
            IncompatibilityKind::MissingUnionBranch => "MISSING_UNION_BRANCH",
            IncompatibilityKind::FixedSizeMismatch => "FIXED_SIZE_MISMATCH",
        }
    }
}

/// One reason a reader cannot read a writer's data, at a field path: field names from
/// the top record joined by `.`, `[]` for an array's items, `{}` for a map's values
/// (empty for the top level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    pub kind: IncompatibilityKind,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "the top level"
        } else {
            &self.path
        };
        write!(f, "{} at {path}: {}", self.kind.code(), self.message)
    }
}

/// Which way data would flow between the new schema and an earlier version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The new schema reads data written with the earlier version.
    NewReadsOld,
    /// The earlier version reads data written with the new schema.
    OldReadsNew,
}

/// A new schema's incompatibility with one earlier version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub version: u32,
    pub direction: Direction,
    pub incompatibility: Incompatibility,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let direction = match self.direction {
            Direction::NewReadsOld => "the new schema cannot read data written with",
            Direction::OldReadsNew => "data written with the new schema cannot be read by",
        };
        write!(
            f,
            "{direction} version {}: {}",
            self.version, self.incompatibility
        )
    }
}

/// Checks `candidate` against the earlier versions `existing` (version number and
/// schema, oldest first) under `mode`; empty when the candidate may be registered.
pub fn check(mode: Compatibility, candidate: &Schema, existing: &[(u32, &Schema)]) -> Vec<Refusal> {
    let against: &[(u32, &Schema)] = if mode.transitive() {
        existing
    } else {
        existing
            .last()
            .map(std::slice::from_ref)
            .unwrap_or_default()
    };
    let mut refusals = Vec::new();
    for (version, earlier) in against {
        if mode.backward() {
            refusals.extend(
                can_read(candidate, earlier)
                    .into_iter()
                    .map(|incompatibility| Refusal {
                        version: *version,
                        direction: Direction::NewReadsOld,
                        incompatibility,
                    }),
            );
        }
        if mode.forward() {
            refusals.extend(
                can_read(earlier, candidate)
                    .into_iter()
                    .map(|incompatibility| Refusal {
                        version: *version,
                        direction: Direction::OldReadsNew,
                        incompatibility,
                    }),
            );
        }
    }
    refusals
}

/// [`check`] on schema texts: `candidate` against `existing` (version, definition),
/// oldest first.
pub fn check_definitions(
    mode: Compatibility,
    candidate: &str,
    existing: &[(u32, &str)],
) -> crate::Result<Vec<Refusal>> {
    let parse = |definition: &str| {
        Schema::parse_str(definition).map_err(|e| crate::SchemaError::Avro(e.to_string()))
    };
    let candidate = parse(candidate)?;
    let existing = existing
        .iter()
        .map(|(version, definition)| Ok((*version, parse(definition)?)))
        .collect::<crate::Result<Vec<_>>>()?;
    let refs: Vec<(u32, &Schema)> = existing.iter().map(|(v, s)| (*v, s)).collect();
    Ok(check(mode, &candidate, &refs))
}

/// Why `reader` cannot read every datum written with `writer`; empty when it can.
pub fn can_read(reader: &Schema, writer: &Schema) -> Vec<Incompatibility> {
    let mut resolver = Resolver {
        reader_names: names(reader),
        writer_names: names(writer),
        resolved: HashSet::new(),
        found: Vec::new(),
    };
    resolver.resolve(reader, writer, "");
    resolver.found
}

/// The named types a schema defines, by full name, so references resolve.
fn names(schema: &Schema) -> HashMap<Name, Schema> {
    ResolvedSchema::try_from(schema)
        .map(|resolved| {
            resolved
                .get_names()
                .iter()
                .map(|(name, schema)| (name.clone(), (*schema).clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The type a schema's values are encoded as: logical types by the type they annotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array,
    Map,
    Union,
    Record,
    Enum,
    Fixed,
}

impl Base {
    fn name(self) -> &'static str {
        match self {
            Base::Null => "null",
            Base::Boolean => "boolean",
            Base::Int => "int",
            Base::Long => "long",
            Base::Float => "float",
            Base::Double => "double",
            Base::Bytes => "bytes",
            Base::String => "string",
            Base::Array => "array",
            Base::Map => "map",
            Base::Union => "union",
            Base::Record => "record",
            Base::Enum => "enum",
            Base::Fixed => "fixed",
        }
    }
}

fn base(schema: &Schema) -> Base {
    match schema {
        Schema::Null => Base::Null,
        Schema::Boolean => Base::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Base::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Base::Long,
        Schema::Float => Base::Float,
        Schema::Double => Base::Double,
        Schema::Bytes | Schema::BigDecimal => Base::Bytes,
        Schema::String | Schema::Uuid => Base::String,
        Schema::Array(_) => Base::Array,
        Schema::Map(_) => Base::Map,
        Schema::Union(_) => Base::Union,
        Schema::Record(_) => Base::Record,
        Schema::Enum(_) => Base::Enum,
        Schema::Fixed(_) | Schema::Duration => Base::Fixed,
        Schema::Decimal(decimal) => base(&decimal.inner),
        // References are resolved before `base` is asked.
        Schema::Ref { .. } => Base::Record,
    }
}

/// Whether a writer's primitive type is read as the reader's, by the specification's
/// promotions.
fn promotes(writer: Base, reader: Base) -> bool {
    writer == reader
        || matches!(
            (writer, reader),
            (Base::Int, Base::Long | Base::Float | Base::Double)
                | (Base::Long, Base::Float | Base::Double)
                | (Base::Float, Base::Double)
                | (Base::String, Base::Bytes)
                | (Base::Bytes, Base::String)
        )
}

fn join(path: &str, part: &str) -> String {
    if path.is_empty() {
        part.to_owned()
    } else if part.starts_with('[') || part.starts_with('{') {
        format!("{path}{part}")
    } else {
        format!("{path}.{part}")
    }
}

/// The name and aliases of a named type.
fn named(schema: &Schema) -> Option<(&Name, Vec<String>)> {
    let (name, aliases) = match schema {
        Schema::Record(record) => (&record.name, &record.aliases),
        Schema::Enum(schema) => (&schema.name, &schema.aliases),
        Schema::Fixed(schema) => (&schema.name, &schema.aliases),
        _ => return None,
    };
    let aliases = aliases
        .iter()
        .flatten()
        .flat_map(|alias| [alias.name(), alias.fullname(name.namespace.clone())])
        .collect();
    Some((name, aliases))
}

struct Resolver {
    reader_names: HashMap<Name, Schema>,
    writer_names: HashMap<Name, Schema>,
    /// Pairs of named types resolved or being resolved. Each pair is resolved once: so
    /// recursive types end, and a type referenced at many places is checked at the first
    /// (re-checking it at every reference took time exponential in the nesting, and the
    /// compatibility endpoint is open to department systems).
    resolved: HashSet<(String, String)>,
    found: Vec<Incompatibility>,
}

impl Resolver {
    fn report(&mut self, kind: IncompatibilityKind, path: &str, message: String) {
        self.found.push(Incompatibility {
            kind,
            path: path.to_owned(),
            message,
        });
    }

    fn dereference<'a>(names: &'a HashMap<Name, Schema>, schema: &'a Schema) -> &'a Schema {
        match schema {
            Schema::Ref { name } => names.get(name).unwrap_or(schema),
            _ => schema,
        }
    }

    /// Reports, under `path`, why `reader` cannot read `writer`'s data.
    fn resolve(&mut self, reader: &Schema, writer: &Schema, path: &str) {
        let reader = Self::dereference(&self.reader_names, reader).clone();
        let writer = Self::dereference(&self.writer_names, writer).clone();
        let (reader, writer) = (&reader, &writer);

        if let Schema::Union(writer_union) = writer {
            // Every branch the writer may have chosen must be readable.
            for branch in writer_union.variants() {
                if matches!(reader, Schema::Union(_)) || self.matches(reader, branch) {
                    self.resolve(reader, branch, path);
                } else {
                    let message = format!(
                        "the writer's union branch {} cannot be read by the reader's {}",
                        self.describe(branch),
                        self.describe(reader)
                    );
                    self.report(IncompatibilityKind::MissingUnionBranch, path, message);
                }
            }
            return;
        }
        if let Schema::Union(reader_union) = reader {
            // The first reader branch that matches the writer's type reads it.
            let matching = reader_union
                .variants()
                .iter()
                .find(|branch| self.matches(branch, writer))
                .cloned();
            match matching {
                Some(branch) => self.resolve(&branch, writer, path),
                None => {
                    let writer_name = self.describe(writer);
                    self.report(
                        IncompatibilityKind::MissingUnionBranch,
                        path,
                        format!("the reader's union has no branch that reads the writer's {writer_name}"),
                    );
                }
            }
            return;
        }

        let (reader_base, writer_base) = (base(reader), base(writer));
        if !promotes(writer_base, reader_base) {
            self.report(
                IncompatibilityKind::TypeMismatch,
                path,
                format!(
                    "the reader's {} cannot read the writer's {}",
                    self.describe(reader),
                    self.describe(writer)
                ),
            );
            return;
        }
        match (reader, writer) {
            (Schema::Decimal(reader_decimal), Schema::Decimal(writer_decimal))
                if reader_decimal.scale != writer_decimal.scale =>
            {
                self.report(
                    IncompatibilityKind::TypeMismatch,
                    path,
                    format!(
                        "the reader's decimal has scale {}, the writer's {}",
                        reader_decimal.scale, writer_decimal.scale
                    ),
                );
            }
            (Schema::Record(_) | Schema::Enum(_) | Schema::Fixed(_), _) => {
                if !self.names_match(reader, writer, path) {
                    return;
                }
                if !self
                    .resolved
                    .insert((self.describe(reader), self.describe(writer)))
                {
                    return;
                }
                match (reader, writer) {
                    (Schema::Record(reader_record), Schema::Record(writer_record)) => {
                        for field in &reader_record.fields {
                            let written = writer_record.fields.iter().find(|written| {
                                written.name == field.name
                                    || field
                                        .aliases
                                        .iter()
                                        .flatten()
                                        .any(|alias| *alias == written.name)
                            });
                            let field_path = join(path, &field.name);
                            match written {
                                Some(written) => {
                                    self.resolve(&field.schema, &written.schema, &field_path)
                                }
                                None if field.default.is_none() => self.report(
                                    IncompatibilityKind::ReaderFieldMissingDefaultValue,
                                    &field_path,
                                    format!(
                                        "the reader's field {} has no default and the writer has no such field",
                                        field.name
                                    ),
                                ),
                                None => {}
                            }
                        }
                    }
                    (Schema::Enum(reader_enum), Schema::Enum(writer_enum)) => {
                        let known: BTreeSet<&String> = reader_enum.symbols.iter().collect();
                        let missing: Vec<&str> = writer_enum
                            .symbols
                            .iter()
                            .filter(|symbol| !known.contains(symbol))
                            .map(String::as_str)
                            .collect();
                        if !missing.is_empty() && reader_enum.default.is_none() {
                            self.report(
                                IncompatibilityKind::MissingEnumSymbols,
                                path,
                                format!(
                                    "the reader's enum {} lacks the writer's symbols {} and has no default",
                                    reader_enum.name.name,
                                    missing.join(", ")
                                ),
                            );
                        }
                    }
                    (Schema::Fixed(reader_fixed), Schema::Fixed(writer_fixed))
                        if reader_fixed.size != writer_fixed.size =>
                    {
                        self.report(
                            IncompatibilityKind::FixedSizeMismatch,
                            path,
                            format!(
                                "the reader's fixed {} is {} bytes, the writer's {}",
                                reader_fixed.name.name, reader_fixed.size, writer_fixed.size
                            ),
                        );
                    }
                    _ => {}
                }
            }
            (Schema::Array(reader_array), Schema::Array(writer_array)) => {
                self.resolve(&reader_array.items, &writer_array.items, &join(path, "[]"));
            }
            (Schema::Map(reader_map), Schema::Map(writer_map)) => {
                self.resolve(&reader_map.types, &writer_map.types, &join(path, "{}"));
            }
            _ => {}
        }
    }

    /// Whether a reader's union branch is the one that reads the writer's type: the
    /// same named type (by name or alias) or the same or a promotable primitive.
    fn matches(&self, reader: &Schema, writer: &Schema) -> bool {
        let reader = Self::dereference(&self.reader_names, reader);
        let writer = Self::dereference(&self.writer_names, writer);
        let (reader_base, writer_base) = (base(reader), base(writer));
        match (named(reader), named(writer)) {
            (Some((reader_name, aliases)), Some((writer_name, _))) => {
                reader_base == writer_base
                    && (reader_name.name == writer_name.name
                        || aliases.iter().any(|alias| {
                            *alias == writer_name.name || *alias == writer_name.fullname(None)
                        }))
            }
            (None, None) => promotes(writer_base, reader_base),
            _ => false,
        }
    }

    fn names_match(&mut self, reader: &Schema, writer: &Schema, path: &str) -> bool {
        let (Some((reader_name, aliases)), Some((writer_name, _))) = (named(reader), named(writer))
        else {
            return true;
        };
        let matched = reader_name.name == writer_name.name
            || aliases
                .iter()
                .any(|alias| *alias == writer_name.name || *alias == writer_name.fullname(None));
        if !matched {
            self.report(
                IncompatibilityKind::NameMismatch,
                path,
                format!(
                    "the reader's {} {} matches neither the name nor an alias of the writer's {}",
                    base(reader).name(),
                    reader_name.fullname(None),
                    writer_name.fullname(None)
                ),
            );
        }
        matched
    }

    fn describe(&self, schema: &Schema) -> String {
        match named(schema) {
            Some((name, _)) => format!("{} {}", base(schema).name(), name.fullname(None)),
            None => match schema {
                Schema::Ref { name } => name.fullname(None),
                _ => base(schema).name().to_owned(),
            },
        }
    }
}
