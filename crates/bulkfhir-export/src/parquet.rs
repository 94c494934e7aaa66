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

use std::borrow::Borrow;
use std::sync::Arc;

use bulkfhir_model::view::Column;
use parquet::{
    basic::{Compression, LogicalType, Repetition, Type as PhysicalType},
    data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type},
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::types::Type,
};
use serde_json::{Number, Value};

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

/// The values of one column, in row order: a definition level per row (`0` null, `1` set) and
/// the values of the rows that are set.
#[derive(Debug)]
enum Values {
    /// The texts one after another, and where each ends: one buffer rather than one allocation
    /// per value (a file holds up to 100,000 rows per column), shared by the values at encoding.
    Text {
        data: Vec<u8>,
        ends: Vec<usize>,
    },
    Int(Vec<i64>),
    Double(Vec<f64>),
    Bool(Vec<bool>),
}

#[derive(Debug)]
struct ColumnValues {
    levels: Vec<i16>,
    values: Values,
}

/// The rows of a Parquet file being built, held by column (as the file stores them): a row's
/// values are converted for their columns once, when it is added, and moved, not copied, into
/// the file.
#[derive(Debug)]
pub(crate) struct Rows {
    columns: Vec<ColumnValues>,
    len: usize,
}

impl Rows {
    /// No rows yet, for columns of `kinds` ([`Kind::of`] each view column).
    pub(crate) fn new(kinds: &[Kind]) -> Rows {
        let columns = kinds
            .iter()
            .map(|kind| ColumnValues {
                levels: Vec::new(),
                values: match kind {
                    Kind::Text => Values::Text { data: Vec::new(), ends: Vec::new() },
                    Kind::Int => Values::Int(Vec::new()),
                    Kind::Double => Values::Double(Vec::new()),
                    Kind::Bool => Values::Bool(Vec::new()),
                },
            })
            .collect();
        Rows { columns, len: 0 }
    }

    /// Adds a row (one value per column) and gives about how many bytes it takes, for file size
    /// limits. A value that does not fit its column (a column typed `integer` that finds
    /// `"abc"`) is an error naming the column's index and why: the rows are then unusable, as
    /// the export that added them fails.
    pub(crate) fn push<V: Borrow<Value>>(&mut self, row: &[V]) -> Result<u64, (usize, String)> {
        if row.len() != self.columns.len() {
            return Err((row.len().min(self.columns.len()), "a row of another view".to_owned()));
        }
        let mut bytes = 0;
        for (index, (value, column)) in row.iter().zip(&mut self.columns).enumerate() {
            bytes += column.push(value.borrow()).map_err(|message| (index, message))?;
        }
        self.len += 1;
        Ok(bytes)
    }
}

impl ColumnValues {
    fn push(&mut self, value: &Value) -> Result<u64, String> {
        if value.is_null() {
            self.levels.push(0);
            return Ok(1);
        }
        let mismatch = |value: &Value, kind: &str| format!("{value} is not a {kind} value");
        let bytes = match &mut self.values {
            Values::Text { data, ends } => {
                let start = data.len();
                match value {
                    Value::String(text) => data.extend_from_slice(text.as_bytes()),
                    // A collection or an object, as its JSON text.
                    other => {
                        // Writing JSON into a Vec cannot fail.
                        let _ = serde_json::to_writer(&mut *data, other);
                    }
                }
                ends.push(data.len());
                (data.len() - start) as u64 + 4
            }
            Values::Int(values) => {
                values.push(number(value, Number::as_i64).ok_or_else(|| mismatch(value, "Int"))?);
                8
            }
            Values::Double(values) => {
                let x = number(value, Number::as_f64).ok_or_else(|| mismatch(value, "Double"))?;
                values.push(x);
                8
            }
            Values::Bool(values) => {
                values.push(value.as_bool().ok_or_else(|| mismatch(value, "Bool"))?);
                1
            }
        };
        self.levels.push(1);
        Ok(bytes)
    }
}

/// A number for a numeric column: a JSON number `as_kind` can hold, or text that parses as one.
fn number<T: std::str::FromStr>(value: &Value, as_kind: fn(&Number) -> Option<T>) -> Option<T> {
    match value {
        Value::Number(n) => as_kind(n),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A Parquet file of `rows`, with the columns `names` of `kinds` (those `rows` was made for).
pub(crate) fn encode(names: &[String], kinds: &[Kind], rows: Rows) -> Result<Vec<u8>, String> {
    let mut rows = rows;
    // Each text column's buffer becomes one shared `Bytes`; its values are slices of it.
    let texts: Vec<bytes::Bytes> = rows
        .columns
        .iter_mut()
        .map(|column| match &mut column.values {
            Values::Text { data, .. } => bytes::Bytes::from(std::mem::take(data)),
            _ => bytes::Bytes::new(),
        })
        .collect();
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
    // Where each column's values of the next row group start (nulls have none).
    let mut offsets = vec![0_usize; rows.columns.len()];
    for start in (0..rows.len).step_by(ROW_GROUP_ROWS) {
        let end = (start + ROW_GROUP_ROWS).min(rows.len);
        let mut row_group = writer.next_row_group().map_err(error)?;
        for (index, column) in rows.columns.iter().enumerate() {
            let Some(mut column_writer) = row_group.next_column().map_err(error)? else {
                return Err(format!("the Parquet schema lacks column {index}"));
            };
            let levels = &column.levels[start..end];
            let from = offsets[index];
            let to = from + levels.iter().filter(|level| **level == 1).count();
            offsets[index] = to;
            match &column.values {
                Values::Text { ends, .. } => {
                    let begin = |i: usize| if i == 0 { 0 } else { ends[i - 1] };
                    let values: Vec<ByteArray> = (from..to)
                        .map(|i| ByteArray::from(texts[index].slice(begin(i)..ends[i])))
                        .collect();
                    column_writer.typed::<ByteArrayType>().write_batch(&values, Some(levels), None)
                }
                Values::Int(values) => column_writer.typed::<Int64Type>().write_batch(
                    &values[from..to],
                    Some(levels),
                    None,
                ),
                Values::Double(values) => column_writer.typed::<DoubleType>().write_batch(
                    &values[from..to],
                    Some(levels),
                    None,
                ),
                Values::Bool(values) => column_writer.typed::<BoolType>().write_batch(
                    &values[from..to],
                    Some(levels),
                    None,
                ),
            }
            .map_err(error)?;
            column_writer.close().map_err(error)?;
        }
        row_group.close().map_err(error)?;
    }
    writer.into_inner().map_err(error)
}

#[cfg(test)]
mod tests {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use serde_json::json;

    use super::*;

    /// Row `i` of the test file: a text column null every 5th row, an integer column null every
    /// 3rd, a decimal and a boolean column always set.
    fn row(i: usize) -> Vec<Value> {
        vec![
            if i.is_multiple_of(5) { Value::Null } else { json!(format!("t{i}")) },
            if i.is_multiple_of(3) { Value::Null } else { json!(i) },
            json!(i as f64 / 2.0),
            json!(i.is_multiple_of(2)),
        ]
    }

    #[test]
    fn rows_read_back_in_order_across_row_groups_with_their_nulls() {
        let kinds = [Kind::Text, Kind::Int, Kind::Double, Kind::Bool];
        let names: Vec<String> = ["t", "n", "x", "b"].map(String::from).to_vec();
        let count = ROW_GROUP_ROWS + ROW_GROUP_ROWS / 2;
        let mut rows = Rows::new(&kinds);
        for i in 0..count {
            rows.push(&row(i)).unwrap();
        }
        let reader =
            SerializedFileReader::new(bytes::Bytes::from(encode(&names, &kinds, rows).unwrap()))
                .unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 2);
        let mut read = 0;
        for (i, found) in reader.get_row_iter(None).unwrap().enumerate() {
            let found: Vec<Value> = found
                .unwrap()
                .get_column_iter()
                .map(|(_, field)| match field {
                    Field::Null => Value::Null,
                    Field::Str(text) => json!(text),
                    Field::Long(n) => json!(n),
                    Field::Double(x) => json!(x),
                    Field::Bool(b) => json!(b),
                    other => panic!("unexpected {other:?}"),
                })
                .collect();
            assert_eq!(found, row(i), "row {i}");
            read += 1;
        }
        assert_eq!(read, count);
    }

    #[test]
    fn a_value_that_does_not_fit_its_column_names_the_column() {
        let mut rows = Rows::new(&[Kind::Text, Kind::Int]);
        assert_eq!(rows.push(&[json!("a"), json!(1)]).unwrap(), 5 + 8);
        let (index, message) = rows.push(&[json!("a"), json!("abc")]).unwrap_err();
        assert_eq!(index, 1);
        assert!(message.contains("\"abc\""), "{message}");
        // A collection or an object in a text column is its JSON text.
        assert!(rows.push(&[json!(["x", "y"]), Value::Null]).is_ok());
    }
}
