//! The visitor a [`SessionData`] lists its fields to ([`Fields`]), and the
//! three walks over those fields: collecting the keys, decoding what the
//! store holds (noting a [`Repair`] for every field reset to its default),
//! and encoding every field.
//!
//! This is where "only that field" is kept: each field is decoded from its
//! own session key, on its own.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Repair, RepairReason, SessionData};

/// The visitor [`SessionData::fields`] lists its fields to. Each call reads
/// (or writes) one field at once; there is nothing to build.
pub struct Fields<'a, T> {
    pub(super) data: &'a mut T,
    pub(super) mode: Mode<'a>,
}

impl<T> fmt::Debug for Fields<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fields").finish_non_exhaustive()
    }
}

/// What a walk over the fields does.
pub(super) enum Mode<'a> {
    /// Collect the keys.
    Names(&'a mut Vec<&'static str>),
    /// Decode `stored[i]` into the i-th field, noting repairs.
    Load {
        stored: &'a mut [Option<Value>],
        index: usize,
        repairs: &'a mut Vec<Repair>,
    },
    /// Encode every field.
    Store(&'a mut Vec<(&'static str, Value)>),
}

impl<T> Fields<'_, T> {
    /// A field stored under the session key `name`; `access` points at it
    /// in the struct (`|s| &mut s.xp`).
    pub fn field<V, A>(&mut self, name: &'static str, access: A) -> &mut Self
    where
        V: Serialize + DeserializeOwned,
        A: Fn(&mut T) -> &mut V,
    {
        self.visit(name, access, None, |_: &V| true)
    }

    /// A field with a rule: a stored value for which `check` says no is
    /// reset to the default like an undecodable one. `rule` describes the
    /// check in words, for the log (`"within 1..=100"`).
    pub fn checked<V, A, C>(
        &mut self,
        name: &'static str,
        access: A,
        rule: &'static str,
        check: C,
    ) -> &mut Self
    where
        V: Serialize + DeserializeOwned,
        A: Fn(&mut T) -> &mut V,
        C: Fn(&V) -> bool,
    {
        self.visit(name, access, Some(rule), check)
    }

    fn visit<V, A, C>(
        &mut self,
        name: &'static str,
        access: A,
        rule: Option<&'static str>,
        check: C,
    ) -> &mut Self
    where
        V: Serialize + DeserializeOwned,
        A: Fn(&mut T) -> &mut V,
        C: Fn(&V) -> bool,
    {
        match &mut self.mode {
            Mode::Names(names) => names.push(name),
            Mode::Load {
                stored,
                index,
                repairs,
            } => {
                let slot = stored.get_mut(*index).and_then(Option::take);
                *index += 1;
                let reason = match slot {
                    None => Some(RepairReason::Missing),
                    Some(value) => match serde_json::from_value::<V>(value) {
                        Err(_) => Some(RepairReason::Undecodable),
                        Ok(value) if !check(&value) => {
                            Some(RepairReason::Invalid(rule.unwrap_or("check")))
                        }
                        Ok(value) => {
                            *access(self.data) = value;
                            None
                        }
                    },
                };
                if let Some(reason) = reason {
                    repairs.push(Repair {
                        field: name,
                        reason,
                    });
                }
            }
            Mode::Store(out) => {
                // Serializing a struct field to a JSON value fails only for
                // maps with non-string keys: such a field is not stored.
                if let Ok(value) = serde_json::to_value(&*access(self.data)) {
                    out.push((name, value));
                }
            }
        }
        self
    }
}

/// Every field of `data`, encoded, under its session key.
pub(super) fn encode<T: SessionData>(data: &mut T) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    T::fields(&mut Fields {
        data,
        mode: Mode::Store(&mut out),
    });
    out
}
