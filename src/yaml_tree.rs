//! A YAML document as a plain tree, and a serde `Deserializer` over it
//! whose error type is the caller's: the config file is read through it so
//! that every refusal arrives as a serde call (`unknown_field`,
//! `invalid_type` with the kind of what was found, ...) with the path
//! that led to it (`serde_path_to_error`), never as another crate's text.
//!
//! Hand-written because no crate models it: yaml_serde's own `Value` can
//! be read only with yaml_serde's error (a message in words), refuses an
//! integer beyond 64 bits (`18446744073709551616` fails as "invalid type:
//! integer ... as u128", where the config must say "too large"), and
//! places a duplicate key at its mapping's first line; serde-value, the
//! generic value tree, is unmaintained since 2020, has no 128-bit
//! integers, and keeps the last of two equal keys without a word.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, Visitor};

/// One YAML value. A mapping keeps its entries in order, duplicates
/// included (see [`Tree::duplicate_key`]); a tag is dropped for its value.
#[derive(Clone, Debug, PartialEq)]
pub enum Tree {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    U128(u128),
    I128(i128),
    F64(f64),
    Str(String),
    Seq(Vec<Tree>),
    Map(Vec<(Tree, Tree)>),
}

/// Where a key is given twice: the keys leading to its mapping (`?` for
/// one that is not a string), and the key itself.
#[derive(Debug, PartialEq)]
pub struct Duplicate {
    pub path: Vec<String>,
    pub key: Tree,
}

impl Tree {
    /// The first key given twice in one mapping, depth first.
    pub fn duplicate_key(&self) -> Option<Duplicate> {
        match self {
            Tree::Seq(items) => items.iter().find_map(Tree::duplicate_key),
            Tree::Map(entries) => {
                for (i, (k, _)) in entries.iter().enumerate() {
                    if entries[..i].iter().any(|(seen, _)| seen == k) {
                        return Some(Duplicate {
                            path: Vec::new(),
                            key: k.clone(),
                        });
                    }
                }
                entries.iter().find_map(|(k, v)| {
                    let mut d = v.duplicate_key()?;
                    d.path.insert(0, k.as_str().unwrap_or("?").to_string());
                    Some(d)
                })
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Tree::Str(s) => Some(s),
            _ => None,
        }
    }

    /// What a `Deserialize` type reads from it, with errors of type `E`
    /// and the path to the value refused.
    pub fn read<T, E>(self) -> Result<T, serde_path_to_error::Error<E>>
    where
        T: de::DeserializeOwned,
        E: de::Error,
    {
        serde_path_to_error::deserialize(TreeDeserializer::<E>::new(self))
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tree, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Tree, E> {
        Ok(Tree::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Tree, E> {
        Ok(Tree::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Tree, E> {
        Ok(Tree::U64(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Tree, E> {
        Ok(Tree::I128(v))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Tree, E> {
        Ok(Tree::U128(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Tree, E> {
        Ok(Tree::F64(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Tree, E> {
        Ok(Tree::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }
    fn visit_none<E>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
        Tree::deserialize(d)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Tree::Seq(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Tree::Map(entries))
    }
    /// A tagged value (`!tag value`): the value.
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Tree, A::Error> {
        let (_tag, variant) = data.variant::<de::IgnoredAny>()?;
        de::VariantAccess::newtype_variant(variant)
    }
}

/// Reads a [`Tree`] as a serde data source, with errors of type `E`.
pub struct TreeDeserializer<E> {
    tree: Tree,
    error: PhantomData<E>,
}

impl<E> TreeDeserializer<E> {
    pub fn new(tree: Tree) -> Self {
        TreeDeserializer {
            tree,
            error: PhantomData,
        }
    }
}

impl<'de, E: de::Error> IntoDeserializer<'de, E> for Tree {
    type Deserializer = TreeDeserializer<E>;
    fn into_deserializer(self) -> TreeDeserializer<E> {
        TreeDeserializer::new(self)
    }
}

impl<'de, E: de::Error> Deserializer<'de> for TreeDeserializer<E> {
    type Error = E;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.tree {
            Tree::Null => visitor.visit_unit(),
            Tree::Bool(v) => visitor.visit_bool(v),
            Tree::U64(v) => visitor.visit_u64(v),
            Tree::I64(v) => visitor.visit_i64(v),
            Tree::U128(v) => visitor.visit_u128(v),
            Tree::I128(v) => visitor.visit_i128(v),
            Tree::F64(v) => visitor.visit_f64(v),
            Tree::Str(v) => visitor.visit_string(v),
            Tree::Seq(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter());
                let v = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(v)
            }
            Tree::Map(entries) => {
                let mut map = MapDeserializer::new(entries.into_iter());
                let v = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(v)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.tree {
            Tree::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    /// A unit variant is written as its name (`claude`, `all`).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, E> {
        match self.tree {
            Tree::Str(s) => visitor.visit_enum(s.into_deserializer()),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, E> {
        visitor.visit_newtype_struct(self)
    }

    /// A struct is a mapping in YAML, never a list of its fields.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, E> {
        match self.tree {
            Tree::Seq(_) => Err(de::Error::invalid_type(de::Unexpected::Seq, &visitor)),
            _ => self.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::Error as PlainError;
    use std::collections::BTreeMap;

    fn tree(yaml: &str) -> Tree {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn keeps_what_yaml_serde_value_loses() {
        let rows: &[(&str, Tree)] = &[
            (
                "a: 18446744073709551616",
                Tree::Map(vec![(
                    Tree::Str("a".into()),
                    Tree::U128(18_446_744_073_709_551_616),
                )]),
            ),
            (
                "a: -99999999999999999999",
                Tree::Map(vec![(
                    Tree::Str("a".into()),
                    Tree::I128(-99_999_999_999_999_999_999),
                )]),
            ),
            (
                "a: 1\na: 2",
                Tree::Map(vec![
                    (Tree::Str("a".into()), Tree::U64(1)),
                    (Tree::Str("a".into()), Tree::U64(2)),
                ]),
            ),
            ("!tag x", Tree::Str("x".into())),
            ("~", Tree::Null),
            (
                "[1.5, true]",
                Tree::Seq(vec![Tree::F64(1.5), Tree::Bool(true)]),
            ),
        ];
        for (yaml, want) in rows {
            assert_eq!(&tree(yaml), want, "{yaml}");
        }
    }

    #[test]
    fn finds_the_first_duplicate_key_and_its_path() {
        let s = |k: &str| Tree::Str(k.into());
        type Row<'a> = (&'a str, Option<(&'a [&'a str], Tree)>);
        let rows: &[Row] = &[
            ("a: 1\nb: 2", None),
            ("a: 1\nb: 2\na: 3", Some((&[], s("a")))),
            ("a:\n  b: 1\n  b: 2", Some((&["a"], s("b")))),
            ("a: [{x: 1, x: 2}]", Some((&["a"], s("x")))),
            ("1: a\n0x1: b", Some((&[], Tree::U64(1)))),
            ("~: a\nnull: b", Some((&[], Tree::Null))),
            (
                "? [1]\n: 1\n? [1]\n: 2",
                Some((&[], Tree::Seq(vec![Tree::U64(1)]))),
            ),
        ];
        for (yaml, want) in rows {
            let got = tree(yaml).duplicate_key();
            let want = want.clone().map(|(p, key)| Duplicate {
                path: p.iter().map(|s| s.to_string()).collect(),
                key,
            });
            assert_eq!(got, want, "{yaml}");
        }
    }

    #[test]
    fn reads_types_with_the_callers_error_and_path() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct S {
            n: Option<u32>,
            big: Option<u128>,
            m: Option<BTreeMap<String, Vec<String>>>,
        }
        let ok: S = tree("n: 3\nbig: 18446744073709551616\nm: {k: [a, b]}")
            .read::<S, PlainError>()
            .unwrap();
        assert_eq!(ok.n, Some(3));
        assert_eq!(ok.big, Some(18_446_744_073_709_551_616));
        assert_eq!(ok.m.unwrap()["k"], ["a", "b"]);
        let e = tree("m: {k: [a, [b]]}")
            .read::<S, PlainError>()
            .unwrap_err();
        assert_eq!(e.path().to_string(), "m.k[1]");
        let e = tree("n: ~\nx: 1").read::<S, PlainError>().unwrap_err();
        assert!(e.inner().to_string().contains("unknown field"), "{e}");
    }
}
