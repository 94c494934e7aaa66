//! Parquet files of a view's rows: one column per view column, typed from the column's declared
//! FHIR type (so every file of a view has the same schema, whatever its rows hold), row groups
//! of [`ROW_GROUP_ROWS`] rows, Snappy-compressed pages.
//!
//! | view column                                   | Parquet                          |
//! |-----------------------------------------------|----------------------------------|
//! | `boolean`                                     | `BOOLEAN`                        |
//! | `integer`, `positiveInt`, `unsignedInt`, `integer64` | `INT64`                   |
//! | `decimal`                                     | `DOUBLE`                         |
//! | anything else, no type, or `collection: true` | `BYTE_ARRAY` (`STRING`); a collection or object as its JSON text |
//!
//! Every column is `OPTIONAL`: an empty value is a null.

use std::sync::Arc;

use bulkfhir_model::view::Column;
use parquet::{
    basic::{Compression, LogicalType, Repetition, Type as PhysicalType},
    data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type},
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::types::Type,
};
use serde_json::Value;

/// Rows per row group: large enough for readers to skip and scan well, small enough that a
/// reader need not hold a whole file.
pub(crate) const ROW_GROUP_ROWS: usize = 65_536;

/// How a view column is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Int,
    Double,
    Bool,
}

impl Kind {
    /// The kind of a view column.
    pub(crate) fn of(column: &Column) -> Kind {
        if column.collection {
            return Kind::Text;
        }
        match column.type_name.as_deref() {
            Some("boolean") => Kind::Bool,
            Some("integer" | "positiveInt" | "unsignedInt" | "integer64") => Kind::Int,
            Some("decimal") => Kind::Double,
            _ => Kind::Text,
        }
    }
}

/// One value, converted for its column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Text(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl Cell {
    /// `value` for a column of `kind`; an error says why it does not fit (a view whose column
    /// is typed `integer` but finds `"abc"`).
    pub(crate) fn convert(kind: Kind, value: &Value) -> Result<Cell, String> {
        if value.is_null() {
            return Ok(Cell::Null);
        }
        let mismatch = || format!("{value} is not a {kind:?} value");
        match kind {
            Kind::Text => Ok(Cell::Text(match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })),
            Kind::Int => match value {
                Value::Number(n) => n.as_i64().map(Cell::Int).ok_or_else(mismatch),
                Value::String(s) => s.parse().map(Cell::Int).map_err(|_| mismatch()),
                _ => Err(mismatch()),
            },
            Kind::Double => match value {
                Value::Number(n) => n.as_f64().map(Cell::Double).ok_or_else(mismatch),
                Value::String(s) => s.parse().map(Cell::Double).map_err(|_| mismatch()),
                _ => Err(mismatch()),
            },
            Kind::Bool => value.as_bool().map(Cell::Bool).ok_or_else(mismatch),
        }
    }

    /// About how many bytes the value takes, for file size limits.
    pub(crate) fn size(&self) -> u64 {
        match self {
            Cell::Null => 1,
            Cell::Text(text) => text.len() as u64 + 4,
            Cell::Int(_) | Cell::Double(_) => 8,
            Cell::Bool(_) => 1,
        }
    }
}

/// A Parquet file of `rows` (each a cell per column, converted with [`Cell::convert`] for the
/// column's kind), with the columns `names` of `kinds` ([`Kind::of`] each view column).
pub(crate) fn encode(
    names: &[String],
    kinds: &[Kind],
    rows: &[Vec<Cell>],
) -> Result<Vec<u8>, String> {
    let error = |e: parquet::errors::ParquetError| format!("write Parquet: {e}");
    let mut fields = Vec::new();
    for (name, kind) in names.iter().zip(kinds) {
        let (physical, logical) = match kind {
            Kind::Text => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
            Kind::Int => (PhysicalType::INT64, None),
            Kind::Double => (PhysicalType::DOUBLE, None),
            Kind::Bool => (PhysicalType::BOOLEAN, None),
        };
        let field = Type::primitive_type_builder(name, physical)
            .with_repetition(Repetition::OPTIONAL)
            .with_logical_type(logical)
            .build()
            .map_err(error)?;
        fields.push(Arc::new(field));
    }
    let schema = Type::group_type_builder("view").with_fields(fields).build().map_err(error)?;
    let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut writer = SerializedFileWriter::new(Vec::new(), Arc::new(schema), Arc::new(properties))
        .map_err(error)?;
    for group in rows.chunks(ROW_GROUP_ROWS) {
        let mut row_group = writer.next_row_group().map_err(error)?;
        for (index, kind) in kinds.iter().enumerate() {
            let Some(mut column) = row_group.next_column().map_err(error)? else {
                return Err(format!("the Parquet schema lacks column {index}"));
            };
            let cells = group.iter().map(|row| row.get(index).unwrap_or(&Cell::Null));
            let levels: Vec<i16> = cells.clone().map(|c| i16::from(*c != Cell::Null)).collect();
            match kind {
                Kind::Text => {
                    let values: Vec<ByteArray> = cells
                        .filter_map(|c| match c {
                            Cell::Text(text) => Some(ByteArray::from(text.as_str())),
                            _ => None,
                        })
                        .collect();
                    column.typed::<ByteArrayType>().write_batch(&values, Some(&levels), None)
                }
                Kind::Int => {
                    let values: Vec<i64> = cells
                        .filter_map(|c| if let Cell::Int(n) = c { Some(*n) } else { None })
                        .collect();
                    column.typed::<Int64Type>().write_batch(&values, Some(&levels), None)
                }
                Kind::Double => {
                    let values: Vec<f64> = cells
                        .filter_map(|c| if let Cell::Double(n) = c { Some(*n) } else { None })
                        .collect();
                    column.typed::<DoubleType>().write_batch(&values, Some(&levels), None)
                }
                Kind::Bool => {
                    let values: Vec<bool> = cells
                        .filter_map(|c| if let Cell::Bool(b) = c { Some(*b) } else { None })
                        .collect();
                    column.typed::<BoolType>().write_batch(&values, Some(&levels), None)
                }
            }
            .map_err(error)?;
            column.close().map_err(error)?;
        }
        row_group.close().map_err(error)?;
    }
    writer.into_inner().map_err(error)
}
