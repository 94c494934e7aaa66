//! The one FHIRPath implementation of bulkfhir: a lexer, a parser to an [`Expr`] and an
//! evaluator over `serde_json` values, serving SQL on FHIR ViewDefinitions ([`crate::view`]) and
//! the R4 search parameters of `_typeFilter` ([`crate::search`]), whose definitions are FHIRPath
//! expressions too. [`reach`] tells which elements of a resource some expressions can read and
//! [`project`] parses a resource's text into just those; [`model`] is the R4 element model.
//!
//! An expression is parsed once ([`parse`]) and evaluated per resource ([`evaluate`]). A collection
//! is a `Vec<Item>`; an [`Item`] borrows the node of the resource (or of the view) it came from
//! and carries the FHIR type when one is known.
//!
//! # Readings
//!
//! * **Typed navigation, when asked.** With [`Env::typed`] (search), an item whose type the R4
//!   model knows is navigated by the model: a name finds the element's JSON names and types them
//!   as the StructureDefinition does (`Observation.code` is a `CodeableConcept`, `effective` finds
//!   `effectiveDateTime` as a `dateTime`, `component` is an `Observation.component`), and the focus
//!   is typed by its resource type. A name the model does not know on that type is navigated as
//!   below.
//! * **Otherwise no FHIR model** (views, which follow the SQL on FHIR suite's readings). The
//!   evaluator walks JSON. Types are known only where the JSON spells them:
//!   a choice element (`value` finds `valueQuantity` and types it `Quantity`), a constant
//!   (`valueDate` is a `date`), a literal, or a function result. An untyped value is typed by its
//!   JSON form when a function asks (`ofType`, `lowBoundary`, comparisons): a JSON boolean is a
//!   `boolean`, a number with a fraction or exponent a `decimal`, another number an `integer`, a
//!   string any string-like FHIR type (and a date, dateTime or time when it reads as one), an
//!   object with `resourceType` that resource type and any other object any complex type.
//! * **Numbers are exact.** Arithmetic and comparisons use a decimal of up to 38 digits (`i128`
//!   mantissa) read from the number's JSON text, so `0.1 + 0.2 = 0.3` and the precision of `1.0`
//!   is one decimal place (as far as `serde_json` keeps the text: without its
//!   `arbitrary_precision` feature `1.00` reads as `1.0`). Division keeps 16 fractional digits;
//!   division by zero is empty, as FHIRPath says.
//! * **Dates and times** compare field by field down to the coarser precision; equal so far at
//!   different precisions is empty (unknown), as FHIRPath says. Offsets are applied when both sides
//!   have one; when only one side has one and both have a time, the result is empty.
//! * **Errors, not guesses:** an unknown function, an unknown `%constant`, a quantity literal, a
//!   comparison of values of different kinds, or a multi-item operand where FHIRPath wants one is an
//!   error.
//! * **`resolve()`** has no server to ask: a reference to a contained resource (`#id`) resolves to
//!   it; any other reference whose target type can be told (from a relative or absolute literal
//!   reference, or from `type`) resolves to a stand-in that has only that type, so that
//!   `resolve() is Patient` works, as search parameters use it, and navigating from it finds
//!   nothing.
//! * **Depth:** the parser refuses expressions nested deeper than [`MAX_DEPTH`]; evaluation follows
//!   the expression tree and checks the same bound.

use std::borrow::Cow;
use std::cmp::Ordering;

use chrono::{Datelike, Timelike};
use serde_json::{Map, Number, Value};

use crate::ResourceType;

pub(crate) mod model;
pub(crate) mod project;
pub(crate) mod reach;
#[cfg(test)]
mod tests;

/// The deepest expression tree the parser builds and the evaluator follows.
pub(crate) const MAX_DEPTH: usize = 128;

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// An expression that does not parse, with the byte offset where the problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) offset: usize,
    pub(crate) message: String,
}

/// An evaluation that failed on a particular input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EvalError {
    pub(crate) message: String,
}

fn eval_err<T>(message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError { message: message.into() })
}

type EvalResult<T> = Result<T, EvalError>;

// ------------------------------------------------------------------------------------------------
// Lexer
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A plain identifier (also the keyword operators `and`, `div`, `is`, ...).
    Ident(String),
    /// A `delimited identifier`, never a keyword.
    Quoted(String),
    Str(String),
    /// A number as written, `12` or `1.50`.
    Num(String),
    /// A number with the `L` suffix.
    Long(String),
    /// A date, dateTime or time literal: the text after `@` (and after `T` for a time) and its type.
    Temporal(String, &'static str),
    /// `%name`.
    Var(String),
    /// `$this`, `$index`, `$total` (without the `$`).
    Special(String),
    Sym(&'static str),
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    offset: usize,
}

const SYMBOLS: &[&str] = &[
    "!=", "!~", "<=", ">=", "(", ")", "[", "]", "{", "}", ".", ",", "+", "-", "*", "/", "&", "|",
    "=", "~", "<", ">",
];

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

impl<'s> Lexer<'s> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.src[self.pos..].chars().nth(ahead)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn error<T>(&self, offset: usize, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { offset, message: message.into() })
    }

    fn digits(&mut self) -> &'s str {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        &self.src[start..self.pos]
    }

    fn exact_digits(&mut self, n: usize, what: &str, start: usize) -> Result<(), ParseError> {
        let d = self.digits();
        if d.len() != n {
            return self.error(start, format!("malformed {what} literal"));
        }
        Ok(())
    }

    fn tokens(mut self) -> Result<Vec<Token>, ParseError> {
        let mut out = Vec::new();
        loop {
            self.skip_space_and_comments()?;
            let offset = self.pos;
            let Some(c) = self.peek() else {
                out.push(Token { tok: Tok::Eof, offset });
                return Ok(out);
            };
            let tok = if c.is_ascii_alphabetic() || c == '_' {
                Tok::Ident(self.identifier().to_owned())
            } else if c.is_ascii_digit() {
                self.number()
            } else if c == '\'' {
                Tok::Str(self.quoted('\'')?)
            } else if c == '`' {
                Tok::Quoted(self.quoted('`')?)
            } else if c == '%' {
                self.bump();
                match self.peek() {
                    Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                        Tok::Var(self.identifier().to_owned())
                    }
                    Some('`') => Tok::Var(self.quoted('`')?),
                    Some('\'') => Tok::Var(self.quoted('\'')?),
                    _ => return self.error(offset, "expected a name after '%'"),
                }
            } else if c == '$' {
                self.bump();
                match self.peek() {
                    Some(c) if c.is_ascii_alphabetic() => {
                        Tok::Special(self.identifier().to_owned())
                    }
                    _ => return self.error(offset, "expected a name after '$'"),
                }
            } else if c == '@' {
                self.bump();
                self.temporal(offset)?
            } else if let Some(sym) = SYMBOLS.iter().find(|s| self.src[self.pos..].starts_with(**s))
            {
                self.pos += sym.len();
                Tok::Sym(sym)
            } else {
                return self.error(offset, format!("unexpected character '{c}'"));
            };
            out.push(Token { tok, offset });
        }
    }

    fn skip_space_and_comments(&mut self) -> Result<(), ParseError> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('/') if self.peek_at(1) == Some('/') => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                Some('/') if self.peek_at(1) == Some('*') => {
                    let start = self.pos;
                    match self.src[self.pos + 2..].find("*/") {
                        Some(end) => self.pos += 2 + end + 2,
                        None => return self.error(start, "unterminated comment"),
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn identifier(&mut self) -> &'s str {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        &self.src[start..self.pos]
    }

    fn number(&mut self) -> Tok {
        let start = self.pos;
        self.digits();
        if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.digits();
        }
        let text = self.src[start..self.pos].to_owned();
        if self.peek() == Some('L') && !text.contains('.') {
            self.pos += 1;
            return Tok::Long(text);
        }
        Tok::Num(text)
    }

    fn quoted(&mut self, quote: char) -> Result<String, ParseError> {
        let start = self.pos;
        self.bump();
        let mut text = String::new();
        loop {
            match self.bump() {
                None => return self.error(start, "unterminated string or delimited identifier"),
                Some(c) if c == quote => return Ok(text),
                Some('\\') => {
                    let escape_at = self.pos - 1;
                    match self.bump() {
                        Some('\'') => text.push('\''),
                        Some('"') => text.push('"'),
                        Some('`') => text.push('`'),
                        Some('\\') => text.push('\\'),
                        Some('/') => text.push('/'),
                        Some('f') => text.push('\u{c}'),
                        Some('n') => text.push('\n'),
                        Some('r') => text.push('\r'),
                        Some('t') => text.push('\t'),
                        Some('u') => {
                            let hex = self.src.get(self.pos..self.pos + 4).unwrap_or("");
                            match u32::from_str_radix(hex, 16).ok().and_then(char::from_u32) {
                                Some(c) if hex.len() == 4 => {
                                    text.push(c);
                                    self.pos += 4;
                                }
                                _ => return self.error(escape_at, "malformed \\u escape"),
                            }
                        }
                        _ => return self.error(escape_at, "unknown escape sequence"),
                    }
                }
                Some(c) => text.push(c),
            }
        }
    }

    /// After `@`: `Thh[:mm[:ss[.fff]]]`, or `YYYY[-MM[-DD]][T[hh[:mm[:ss[.fff]]]][tz]]`.
    fn temporal(&mut self, start: usize) -> Result<Tok, ParseError> {
        if self.peek() == Some('T') {
            self.bump();
            let from = self.pos;
            self.time_part(start)?;
            let text = self.src[from..self.pos].to_owned();
            if Temporal::parse_time(&text).is_none() {
                return self.error(start, format!("malformed time literal '@T{text}'"));
            }
            return Ok(Tok::Temporal(text, "time"));
        }
        let from = self.pos;
        self.exact_digits(4, "date", start)?;
        if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
            self.exact_digits(2, "date", start)?;
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
                self.bump();
                self.exact_digits(2, "date", start)?;
            }
        }
        let mut ty = "date";
        if self.peek() == Some('T') {
            ty = "dateTime";
            self.bump();
            if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.time_part(start)?;
                match self.peek() {
                    Some('Z') => {
                        self.bump();
                    }
                    Some('+' | '-') if self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) => {
                        self.bump();
                        self.exact_digits(2, "time zone", start)?;
                        if self.bump() != Some(':') {
                            return self.error(start, "malformed time zone in date/time literal");
                        }
                        self.exact_digits(2, "time zone", start)?;
                    }
                    _ => {}
                }
            }
        }
        let mut text = &self.src[from..self.pos];
        if let Some(stripped) = text.strip_suffix('T') {
            text = stripped;
        }
        if Temporal::parse_date_time(text).is_none() {
            return self.error(start, format!("malformed date/time literal '@{text}'"));
        }
        Ok(Tok::Temporal(text.to_owned(), ty))
    }

    fn time_part(&mut self, start: usize) -> Result<(), ParseError> {
        self.exact_digits(2, "time", start)?;
        if self.peek() == Some(':') {
            self.bump();
            self.exact_digits(2, "time", start)?;
            if self.peek() == Some(':') {
                self.bump();
                self.exact_digits(2, "time", start)?;
                if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
                    self.bump();
                    self.digits();
                }
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// AST
// ------------------------------------------------------------------------------------------------

/// A parsed FHIRPath expression.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    /// A literal and its type.
    Literal(Value, &'static str),
    /// `{}`.
    EmptySet,
    This,
    Index,
    /// `%rowIndex`.
    RowIndex,
    /// `%name` of a view constant, by position in the constant list.
    Constant(usize),
    /// `%resource`, `%rootResource`, `%context`.
    Resource,
    /// A name at the start of a term: navigation from the focus (or the focus itself when the name
    /// is its resource type, as in `Patient.name`).
    Member(String),
    /// A function at the start of a term, applied to the focus.
    Call(Box<Call>),
    /// `expr.name`.
    Path(Box<Expr>, String),
    /// `expr.function(...)`.
    Invoke(Box<Expr>, Box<Call>),
    /// `expr[index]`.
    Indexer(Box<Expr>, Box<Expr>),
    Negate(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, String),
    As(Box<Expr>, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

/// A function call with its arguments checked at parse time.
#[derive(Debug, Clone)]
pub(crate) enum Call {
    Empty,
    Exists(Option<Expr>),
    All(Expr),
    AllTrue,
    AnyTrue,
    AllFalse,
    AnyFalse,
    Count,
    Distinct,
    First,
    Last,
    Tail,
    Skip(Expr),
    Take(Expr),
    Single,
    Where(Expr),
    Select(Expr),
    Iif(Expr, Expr, Option<Expr>),
    Not,
    OfType(String),
    Is(String),
    As(String),
    Extension(Expr),
    Join(Option<Expr>),
    GetResourceKey,
    GetReferenceKey(Option<String>),
    LowBoundary(Option<Expr>),
    HighBoundary(Option<Expr>),
    HasValue,
    ToString,
    ToInteger,
    ToDecimal,
    Length,
    StartsWith(Expr),
    EndsWith(Expr),
    Contains(Expr),
    Upper,
    Lower,
    Resolve,
}

/// The functions [`parse`] accepts, for error messages.
const FUNCTIONS: &str = "all, allFalse, allTrue, anyFalse, anyTrue, as, contains, count, distinct, empty, \
     endsWith, exists, extension, first, getReferenceKey, getResourceKey, hasValue, highBoundary, iif, is, \
     join, last, length, lower, lowBoundary, not, ofType, resolve, select, single, skip, startsWith, tail, \
     take, toDecimal, toInteger, toString, upper, where";

impl Call {
    /// The argument evaluated on the enclosing `$this` rather than on each item of the input
    /// (as the lambdas of `where()`, `select()`, `exists()`, `all()` and `iif()` are), if any.
    pub(crate) fn outer_argument(&self) -> Option<&Expr> {
        match self {
            Call::Skip(arg)
            | Call::Take(arg)
            | Call::Extension(arg)
            | Call::StartsWith(arg)
            | Call::EndsWith(arg)
            | Call::Contains(arg)
            | Call::Join(Some(arg))
            | Call::LowBoundary(Some(arg))
            | Call::HighBoundary(Some(arg)) => Some(arg),
            _ => None,
        }
    }
}

impl Expr {
    /// Whether this is exactly `%rowIndex`.
    pub(crate) fn is_row_index(&self) -> bool {
        matches!(self, Expr::RowIndex)
    }
}

// ------------------------------------------------------------------------------------------------
// Parser
// ------------------------------------------------------------------------------------------------

/// Parses `src`; `constants` are the names `%name` may refer to, in the order
/// [`Env::constants`] holds their values.
pub(crate) fn parse(src: &str, constants: &[String]) -> Result<Expr, ParseError> {
    let tokens = Lexer { src, pos: 0 }.tokens()?;
    let mut parser = Parser { tokens, pos: 0, constants };
    if matches!(parser.peek(), Tok::Eof) {
        return parser.error("empty expression");
    }
    let (expr, _) = parser.expr(0, 0)?;
    if !matches!(parser.peek(), Tok::Eof) {
        return parser.error(format!("unexpected {}", describe(parser.peek())));
    }
    Ok(expr)
}

struct Parser<'c> {
    tokens: Vec<Token>,
    pos: usize,
    constants: &'c [String],
}

/// An expression and the height of its tree.
type Node = (Expr, usize);

enum Infix {
    Bin(BinOp),
    Is,
    As,
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(s) | Tok::Quoted(s) => format!("name '{s}'"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Num(s) | Tok::Long(s) => format!("number {s}"),
        Tok::Temporal(s, _) => format!("date/time @{s}"),
        Tok::Var(s) => format!("'%{s}'"),
        Tok::Special(s) => format!("'${s}'"),
        Tok::Sym(s) => format!("'{s}'"),
        Tok::Eof => "end of expression".to_owned(),
    }
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        self.tokens.get(self.pos).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn peek_next(&self) -> &Tok {
        self.tokens.get(self.pos + 1).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.pos).or_else(|| self.tokens.last()).map_or(0, |t| t.offset)
    }

    fn advance(&mut self) -> Tok {
        let tok = self.peek().clone();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        tok
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { offset: self.offset(), message: message.into() })
    }

    fn expect(&mut self, sym: &'static str) -> Result<(), ParseError> {
        if self.peek() == &Tok::Sym(sym) {
            self.advance();
            Ok(())
        } else {
            self.error(format!("expected '{sym}', found {}", describe(self.peek())))
        }
    }

    fn node(&self, expr: Expr, height: usize) -> Result<Node, ParseError> {
        if height > MAX_DEPTH {
            return self.too_deep();
        }
        Ok((expr, height))
    }

    fn infix(&self) -> Option<(Infix, u8)> {
        Some(match self.peek() {
            Tok::Sym("*") => (Infix::Bin(BinOp::Mul), 10),
            Tok::Sym("/") => (Infix::Bin(BinOp::Div), 10),
            Tok::Ident(s) if s == "div" => (Infix::Bin(BinOp::IntDiv), 10),
            Tok::Ident(s) if s == "mod" => (Infix::Bin(BinOp::Mod), 10),
            Tok::Sym("+") => (Infix::Bin(BinOp::Add), 9),
            Tok::Sym("-") => (Infix::Bin(BinOp::Sub), 9),
            Tok::Sym("&") => (Infix::Bin(BinOp::Concat), 9),
            Tok::Ident(s) if s == "is" => (Infix::Is, 8),
            Tok::Ident(s) if s == "as" => (Infix::As, 8),
            Tok::Sym("|") => (Infix::Bin(BinOp::Union), 7),
            Tok::Sym("<") => (Infix::Bin(BinOp::Lt), 6),
            Tok::Sym("<=") => (Infix::Bin(BinOp::Le), 6),
            Tok::Sym(">") => (Infix::Bin(BinOp::Gt), 6),
            Tok::Sym(">=") => (Infix::Bin(BinOp::Ge), 6),
            Tok::Sym("=") => (Infix::Bin(BinOp::Eq), 5),
            Tok::Sym("!=") => (Infix::Bin(BinOp::Ne), 5),
            Tok::Sym("~") => (Infix::Bin(BinOp::Equiv), 5),
            Tok::Sym("!~") => (Infix::Bin(BinOp::NotEquiv), 5),
            Tok::Ident(s) if s == "in" => (Infix::Bin(BinOp::In), 4),
            Tok::Ident(s) if s == "contains" => (Infix::Bin(BinOp::Contains), 4),
            Tok::Ident(s) if s == "and" => (Infix::Bin(BinOp::And), 3),
            Tok::Ident(s) if s == "or" => (Infix::Bin(BinOp::Or), 2),
            Tok::Ident(s) if s == "xor" => (Infix::Bin(BinOp::Xor), 2),
            Tok::Ident(s) if s == "implies" => (Infix::Bin(BinOp::Implies), 1),
            _ => return None,
        })
    }

    /// Precedence climbing: every operator is left-associative.
    fn expr(&mut self, min_prec: u8, depth: usize) -> Result<Node, ParseError> {
        if depth > MAX_DEPTH {
            return self.too_deep();
        }
        let (mut lhs, mut height) = self.unary(depth)?;
        while let Some((op, prec)) = self.infix() {
            if prec < min_prec {
                break;
            }
            self.advance();
            match op {
                Infix::Is | Infix::As => {
                    let ty = self.type_name()?;
                    let expr = match op {
                        Infix::Is => Expr::Is(Box::new(lhs), ty),
                        _ => Expr::As(Box::new(lhs), ty),
                    };
                    (lhs, height) = self.node(expr, height + 1)?;
                }
                Infix::Bin(op) => {
                    let (rhs, rh) = self.expr(prec + 1, depth + 1)?;
                    (lhs, height) = self
                        .node(Expr::Binary(op, Box::new(lhs), Box::new(rhs)), height.max(rh) + 1)?;
                }
            }
        }
        Ok((lhs, height))
    }

    fn unary(&mut self, depth: usize) -> Result<Node, ParseError> {
        if depth > MAX_DEPTH {
            return self.too_deep();
        }
        match self.peek() {
            Tok::Sym("+") => {
                self.advance();
                self.unary(depth + 1)
            }
            Tok::Sym("-") => {
                self.advance();
                let (operand, h) = self.unary(depth + 1)?;
                let expr = self.negation(operand)?;
                self.node(expr, h + 1)
            }
            _ => self.postfix(depth),
        }
    }

    #[cold]
    #[inline(never)]
    fn too_deep<T>(&self) -> Result<T, ParseError> {
        self.error(format!("expression is nested deeper than {MAX_DEPTH} levels"))
    }

    #[cold]
    #[inline(never)]
    fn expected_name<T>(&self, found: &Tok) -> Result<T, ParseError> {
        self.error(format!("expected a name after '.', found {}", describe(found)))
    }

    /// `-operand`, folded into the literal when the operand is a number.
    #[inline(never)]
    fn negation(&self, operand: Expr) -> Result<Expr, ParseError> {
        Ok(match operand {
            Expr::Literal(Value::Number(n), ty) => match Decimal::from_number(&n).map(Decimal::neg)
            {
                Some(d) if ty == "integer" => match d.to_i64() {
                    Some(i) => Expr::Literal(Value::from(i), "integer"),
                    None => return self.error("integer literal out of range"),
                },
                Some(d) => Expr::Literal(d.to_value(), ty),
                None => return self.error("number literal out of range"),
            },
            other => Expr::Negate(Box::new(other)),
        })
    }

    fn postfix(&mut self, depth: usize) -> Result<Node, ParseError> {
        let (mut expr, mut height) = self.term(depth)?;
        loop {
            match self.peek() {
                Tok::Sym(".") => {
                    self.advance();
                    let name = match self.advance() {
                        Tok::Ident(name) => name,
                        Tok::Quoted(name) => {
                            (expr, height) =
                                self.node(Expr::Path(Box::new(expr), name), height + 1)?;
                            continue;
                        }
                        other => return self.expected_name(&other),
                    };
                    if self.peek() == &Tok::Sym("(") {
                        let (call, h) = self.call(&name, depth)?;
                        (expr, height) = self.node(
                            Expr::Invoke(Box::new(expr), Box::new(call)),
                            height.max(h) + 1,
                        )?;
                    } else {
                        (expr, height) = self.node(Expr::Path(Box::new(expr), name), height + 1)?;
                    }
                }
                Tok::Sym("[") => {
                    self.advance();
                    let (index, h) = self.expr(0, depth + 1)?;
                    self.expect("]")?;
                    (expr, height) = self
                        .node(Expr::Indexer(Box::new(expr), Box::new(index)), height.max(h) + 1)?;
                }
                _ => return Ok((expr, height)),
            }
        }
    }

    /// A term. Only the recursive cases are handled here, so that the frames on the recursive
    /// path stay small (the bound on depth must hold with small thread stacks in debug builds).
    fn term(&mut self, depth: usize) -> Result<Node, ParseError> {
        match (self.peek(), self.peek_next()) {
            (Tok::Sym("("), _) => {
                self.advance();
                let (inner, h) = self.expr(0, depth + 1)?;
                self.expect(")")?;
                self.node(inner, h + 1)
            }
            (Tok::Ident(_), Tok::Sym("(")) => {
                let Tok::Ident(name) = self.advance() else { return self.error("expected a name") };
                let (call, h) = self.call(&name, depth)?;
                self.node(Expr::Call(Box::new(call)), h + 1)
            }
            _ => Ok((self.atom()?, 1)),
        }
    }

    /// A term that holds no sub-expression.
    #[inline(never)]
    fn atom(&mut self) -> Result<Expr, ParseError> {
        let start = self.pos;
        let tok = self.advance();
        let expr = match tok {
            Tok::Sym("{") => {
                self.expect("}")?;
                Expr::EmptySet
            }
            Tok::Str(s) => Expr::Literal(Value::String(s), "string"),
            Tok::Num(text) => {
                self.refuse_quantity()?;
                if text.contains('.') {
                    match Decimal::parse(&text) {
                        Some(d) => Expr::Literal(d.to_value(), "decimal"),
                        None => return self.error_at(start, "number literal out of range"),
                    }
                } else {
                    match text.parse::<i64>() {
                        Ok(i) => Expr::Literal(Value::from(i), "integer"),
                        Err(_) => return self.error_at(start, "integer literal out of range"),
                    }
                }
            }
            Tok::Long(text) => match text.parse::<i64>() {
                Ok(i) => Expr::Literal(Value::from(i), "integer64"),
                Err(_) => return self.error_at(start, "long literal out of range"),
            },
            Tok::Temporal(text, ty) => Expr::Literal(Value::String(text), ty),
            Tok::Var(name) => {
                if let Some(i) = self.constants.iter().position(|c| *c == name) {
                    Expr::Constant(i)
                } else {
                    match name.as_str() {
                        "rowIndex" => Expr::RowIndex,
                        "resource" | "rootResource" | "context" => Expr::Resource,
                        "ucum" => Expr::Literal(Value::from("http://unitsofmeasure.org"), "string"),
                        "sct" => Expr::Literal(Value::from("http://snomed.info/sct"), "string"),
                        "loinc" => Expr::Literal(Value::from("http://loinc.org"), "string"),
                        _ => return self.error_at(start, format!("unknown constant '%{name}'")),
                    }
                }
            }
            Tok::Special(name) => match name.as_str() {
                "this" => Expr::This,
                "index" => Expr::Index,
                _ => return self.error_at(start, format!("'${name}' is not supported")),
            },
            Tok::Ident(name) if name == "true" || name == "false" => {
                Expr::Literal(Value::Bool(name == "true"), "boolean")
            }
            Tok::Ident(name) | Tok::Quoted(name) => Expr::Member(name),
            other => return self.error_at(start, format!("unexpected {}", describe(&other))),
        };
        Ok(expr)
    }

    fn error_at<T>(&self, token: usize, message: impl Into<String>) -> Result<T, ParseError> {
        let offset = self.tokens.get(token).map_or(0, |t| t.offset);
        Err(ParseError { offset, message: message.into() })
    }

    fn refuse_quantity(&self) -> Result<(), ParseError> {
        const UNITS: &[&str] = &[
            "year",
            "years",
            "month",
            "months",
            "week",
            "weeks",
            "day",
            "days",
            "hour",
            "hours",
            "minute",
            "minutes",
            "second",
            "seconds",
            "millisecond",
            "milliseconds",
        ];
        match self.peek() {
            Tok::Str(_) => self.error("quantity literals are not supported"),
            Tok::Ident(unit) if UNITS.contains(&unit.as_str()) => {
                self.error("quantity literals are not supported")
            }
            _ => Ok(()),
        }
    }

    /// `Name` or `Namespace.Name` after `is` / `as`.
    fn type_name(&mut self) -> Result<String, ParseError> {
        let first = match self.advance() {
            Tok::Ident(s) | Tok::Quoted(s) => s,
            other => {
                return self.error(format!("expected a type name, found {}", describe(&other)));
            }
        };
        if self.peek() == &Tok::Sym(".")
            && matches!(self.peek_next(), Tok::Ident(_) | Tok::Quoted(_))
        {
            self.advance();
            if let Tok::Ident(second) | Tok::Quoted(second) = self.advance() {
                return self.normalize_type(Some(&first), &second);
            }
        }
        self.normalize_type(None, &first)
    }

    fn normalize_type(&self, namespace: Option<&str>, name: &str) -> Result<String, ParseError> {
        let system = match name {
            "Boolean" => Some("boolean"),
            "String" => Some("string"),
            "Integer" => Some("integer"),
            "Long" => Some("integer64"),
            "Decimal" => Some("decimal"),
            "Date" => Some("date"),
            "DateTime" => Some("dateTime"),
            "Time" => Some("time"),
            "Quantity" => Some("Quantity"),
            _ => None,
        };
        match (namespace, system) {
            (Some("System") | None, Some(t)) => Ok(t.to_owned()),
            (Some("System"), None) => self.error(format!("unknown System type '{name}'")),
            (Some("FHIR") | None, _) => Ok(name.to_owned()),
            (Some(ns), _) => self.error(format!("unknown type namespace '{ns}'")),
        }
    }

    fn type_arg(&self, expr: &Expr) -> Result<String, ParseError> {
        match expr {
            Expr::Member(name) => self.normalize_type(None, name),
            Expr::Path(base, name) => match base.as_ref() {
                Expr::Member(ns) => self.normalize_type(Some(ns), name),
                _ => self.error("expected a type name"),
            },
            _ => self.error("expected a type name"),
        }
    }

    /// `name(args)`: the arguments are checked against the function's signature here, so an
    /// unknown function or a wrong number of arguments is a parse error.
    fn call(&mut self, name: &str, depth: usize) -> Result<(Call, usize), ParseError> {
        let at = self.pos.saturating_sub(1);
        self.expect("(")?;
        let mut args = Vec::new();
        let mut height = 0;
        if self.peek() != &Tok::Sym(")") {
            loop {
                let (arg, h) = self.expr(0, depth + 1)?;
                height = height.max(h);
                args.push(arg);
                if self.peek() == &Tok::Sym(",") {
                    self.advance();
                } else {
                    break;
                }
            }
        }
        self.expect(")")?;
        Ok((self.build_call(name, args, at)?, height + 1))
    }

    /// Checks the arguments of `name(args)` against its signature.
    #[inline(never)]
    fn build_call(&self, name: &str, args: Vec<Expr>, at: usize) -> Result<Call, ParseError> {
        let count = args.len();
        let arity = |min: usize, max: usize| -> Result<(), ParseError> {
            if count < min || count > max {
                let expected =
                    if min == max { format!("{min}") } else { format!("{min} to {max}") };
                self.error_at(at, format!("{name}() takes {expected} argument(s), got {count}"))
            } else {
                Ok(())
            }
        };
        let mut args = args.into_iter();
        let mut next = || args.next();
        let call = match name {
            "empty" => arity(0, 0).map(|_| Call::Empty)?,
            "exists" => arity(0, 1).map(|_| Call::Exists(next()))?,
            "all" => {
                arity(1, 1)?;
                Call::All(next().unwrap_or(Expr::EmptySet))
            }
            "allTrue" => arity(0, 0).map(|_| Call::AllTrue)?,
            "anyTrue" => arity(0, 0).map(|_| Call::AnyTrue)?,
            "allFalse" => arity(0, 0).map(|_| Call::AllFalse)?,
            "anyFalse" => arity(0, 0).map(|_| Call::AnyFalse)?,
            "count" => arity(0, 0).map(|_| Call::Count)?,
            "distinct" => arity(0, 0).map(|_| Call::Distinct)?,
            "first" => arity(0, 0).map(|_| Call::First)?,
            "last" => arity(0, 0).map(|_| Call::Last)?,
            "tail" => arity(0, 0).map(|_| Call::Tail)?,
            "skip" => {
                arity(1, 1)?;
                Call::Skip(next().unwrap_or(Expr::EmptySet))
            }
            "take" => {
                arity(1, 1)?;
                Call::Take(next().unwrap_or(Expr::EmptySet))
            }
            "single" => arity(0, 0).map(|_| Call::Single)?,
            "where" => {
                arity(1, 1)?;
                Call::Where(next().unwrap_or(Expr::EmptySet))
            }
            "select" => {
                arity(1, 1)?;
                Call::Select(next().unwrap_or(Expr::EmptySet))
            }
            "iif" => {
                arity(2, 3)?;
                let criterion = next().unwrap_or(Expr::EmptySet);
                let then = next().unwrap_or(Expr::EmptySet);
                Call::Iif(criterion, then, next())
            }
            "not" => arity(0, 0).map(|_| Call::Not)?,
            "ofType" | "is" | "as" => {
                arity(1, 1)?;
                let ty = self.type_arg(&next().unwrap_or(Expr::EmptySet))?;
                match name {
                    "ofType" => Call::OfType(ty),
                    "is" => Call::Is(ty),
                    _ => Call::As(ty),
                }
            }
            "extension" => {
                arity(1, 1)?;
                Call::Extension(next().unwrap_or(Expr::EmptySet))
            }
            "join" => arity(0, 1).map(|_| Call::Join(next()))?,
            "getResourceKey" => arity(0, 0).map(|_| Call::GetResourceKey)?,
            "getReferenceKey" => {
                arity(0, 1)?;
                match next() {
                    Some(arg) => Call::GetReferenceKey(Some(self.type_arg(&arg)?)),
                    None => Call::GetReferenceKey(None),
                }
            }
            "lowBoundary" => arity(0, 1).map(|_| Call::LowBoundary(next()))?,
            "highBoundary" => arity(0, 1).map(|_| Call::HighBoundary(next()))?,
            "hasValue" => arity(0, 0).map(|_| Call::HasValue)?,
            "toString" => arity(0, 0).map(|_| Call::ToString)?,
            "toInteger" => arity(0, 0).map(|_| Call::ToInteger)?,
            "toDecimal" => arity(0, 0).map(|_| Call::ToDecimal)?,
            "length" => arity(0, 0).map(|_| Call::Length)?,
            "startsWith" => {
                arity(1, 1)?;
                Call::StartsWith(next().unwrap_or(Expr::EmptySet))
            }
            "endsWith" => {
                arity(1, 1)?;
                Call::EndsWith(next().unwrap_or(Expr::EmptySet))
            }
            "contains" => {
                arity(1, 1)?;
                Call::Contains(next().unwrap_or(Expr::EmptySet))
            }
            "upper" => arity(0, 0).map(|_| Call::Upper)?,
            "lower" => arity(0, 0).map(|_| Call::Lower)?,
            "resolve" => arity(0, 0).map(|_| Call::Resolve)?,
            _ => {
                return self.error_at(
                    at,
                    format!("unknown or unsupported function '{name}()'; supported: {FUNCTIONS}"),
                );
            }
        };
        Ok(call)
    }
}

// ------------------------------------------------------------------------------------------------
// Values
// ------------------------------------------------------------------------------------------------

/// One member of a collection: a JSON value, borrowed from the resource or the view when it can
/// be, and its FHIR type when known.
#[derive(Debug, Clone)]
pub(crate) struct Item<'a> {
    pub(crate) value: Cow<'a, Value>,
    pub(crate) ty: Option<&'static str>,
}

impl<'a> Item<'a> {
    pub(crate) fn borrowed(value: &'a Value, ty: Option<&'static str>) -> Self {
        Item { value: Cow::Borrowed(value), ty }
    }

    fn owned(value: Value, ty: &'static str) -> Self {
        Item { value: Cow::Owned(value), ty: Some(ty) }
    }

    fn boolean(b: bool) -> Self {
        Item::owned(Value::Bool(b), "boolean")
    }

    fn integer(i: i64) -> Self {
        Item::owned(Value::from(i), "integer")
    }

    fn string(s: String, ty: &'static str) -> Self {
        Item::owned(Value::String(s), ty)
    }

    fn decimal(d: Decimal) -> Self {
        Item::owned(d.to_value(), "decimal")
    }

    fn json(&self) -> &Value {
        &self.value
    }

    fn as_str(&self) -> Option<&str> {
        self.value.as_str()
    }

    /// The value as a FHIRPath number, if it is one.
    fn number(&self) -> EvalResult<Option<Num>> {
        let Value::Number(n) = self.json() else { return Ok(None) };
        let decimal_typed = self.ty == Some("decimal");
        if !decimal_typed && let Some(i) = n.as_i64() {
            return Ok(Some(Num::Int(i)));
        }
        match Decimal::from_number(n) {
            Some(d) => Ok(Some(Num::Dec(d))),
            None => eval_err(format!("number {n} is outside the supported range (38 digits)")),
        }
    }

    /// The kind of date/time this item is declared as (never guessed from the text).
    fn temporal_type(&self) -> Option<TemporalKind> {
        match self.ty? {
            "date" => Some(TemporalKind::Date),
            "dateTime" | "instant" => Some(TemporalKind::DateTime),
            "time" => Some(TemporalKind::Time),
            _ => None,
        }
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Data types that may follow a choice element's base name in JSON (`valueQuantity`), with the
/// type name FHIRPath uses for them (R4 and R5).
const CHOICE_TYPES: &[(&str, &str)] = &[
    ("Address", "Address"),
    ("Age", "Age"),
    ("Annotation", "Annotation"),
    ("Attachment", "Attachment"),
    ("Availability", "Availability"),
    ("Base64Binary", "base64Binary"),
    ("Boolean", "boolean"),
    ("Canonical", "canonical"),
    ("Code", "code"),
    ("CodeableConcept", "CodeableConcept"),
    ("CodeableReference", "CodeableReference"),
    ("Coding", "Coding"),
    ("ContactDetail", "ContactDetail"),
    ("ContactPoint", "ContactPoint"),
    ("Contributor", "Contributor"),
    ("Count", "Count"),
    ("DataRequirement", "DataRequirement"),
    ("Date", "date"),
    ("DateTime", "dateTime"),
    ("Decimal", "decimal"),
    ("Distance", "Distance"),
    ("Dosage", "Dosage"),
    ("Duration", "Duration"),
    ("Expression", "Expression"),
    ("ExtendedContactDetail", "ExtendedContactDetail"),
    ("HumanName", "HumanName"),
    ("Id", "id"),
    ("Identifier", "Identifier"),
    ("Instant", "instant"),
    ("Integer", "integer"),
    ("Integer64", "integer64"),
    ("Markdown", "markdown"),
    ("Meta", "Meta"),
    ("MonetaryComponent", "MonetaryComponent"),
    ("Money", "Money"),
    ("Oid", "oid"),
    ("ParameterDefinition", "ParameterDefinition"),
    ("Period", "Period"),
    ("PositiveInt", "positiveInt"),
    ("Quantity", "Quantity"),
    ("Range", "Range"),
    ("Ratio", "Ratio"),
    ("RatioRange", "RatioRange"),
    ("Reference", "Reference"),
    ("RelatedArtifact", "RelatedArtifact"),
    ("SampledData", "SampledData"),
    ("Signature", "Signature"),
    ("String", "string"),
    ("Time", "time"),
    ("Timing", "Timing"),
    ("TriggerDefinition", "TriggerDefinition"),
    ("UnsignedInt", "unsignedInt"),
    ("Uri", "uri"),
    ("Url", "url"),
    ("UsageContext", "UsageContext"),
    ("Uuid", "uuid"),
    ("VirtualServiceDetail", "VirtualServiceDetail"),
];

/// The FHIRPath type of a choice element's JSON suffix (`DateTime` → `dateTime`).
pub(crate) fn choice_type(suffix: &str) -> Option<&'static str> {
    CHOICE_TYPES.iter().find(|(s, _)| *s == suffix).map(|(_, t)| *t)
}

/// FHIR's specialisations among the data types: `code` is a `string`, `url` a `uri`, ...
pub(crate) fn is_subtype(ty: &str, of: &str) -> bool {
    match of {
        "string" => matches!(ty, "code" | "id" | "markdown"),
        "uri" => matches!(ty, "url" | "canonical" | "oid" | "uuid"),
        "integer" => matches!(ty, "positiveInt" | "unsignedInt"),
        "Quantity" => matches!(
            ty,
            "Age" | "Count" | "Distance" | "Duration" | "MoneyQuantity" | "SimpleQuantity"
        ),
        _ => false,
    }
}

/// Whether `item` is of type `ty` (or a specialisation of it); see the module notes for untyped
/// values.
fn is_type(item: &Item<'_>, ty: &str) -> bool {
    if let Some(known) = item.ty {
        return known == ty || is_subtype(known, ty);
    }
    match item.json() {
        Value::Bool(_) => ty == "boolean",
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                matches!(ty, "integer" | "decimal" | "integer64" | "positiveInt" | "unsignedInt")
            } else {
                ty == "decimal"
            }
        }
        Value::String(s) => match ty {
            "string" | "code" | "id" | "markdown" | "uri" | "url" | "canonical" | "oid"
            | "uuid" | "base64Binary" | "xhtml" => true,
            "date" => Temporal::parse_date_time(s).is_some_and(|t| t.is_date()),
            "dateTime" => Temporal::parse_date_time(s).is_some(),
            "instant" => Temporal::parse_date_time(s).is_some_and(|t| t.is_instant()),
            "time" => Temporal::parse_time(s).is_some(),
            _ => false,
        },
        Value::Object(map) => match map.get("resourceType").and_then(Value::as_str) {
            Some(rt) => rt == ty || ty == "Resource" || ty == "DomainResource",
            None => {
                ty.starts_with(|c: char| c.is_ascii_uppercase()) && ResourceType::parse(ty).is_err()
            }
        },
        _ => false,
    }
}

/// Children of `map` named `name`, arrays flattened and nulls dropped; a missing `name` that is
/// the base of a choice element finds its typed spellings (`value` → `valueQuantity`).
fn children<'m>(
    map: &'m Map<String, Value>,
    name: &str,
    push: &mut dyn FnMut(&'m Value, Option<&'static str>),
) {
    let mut flat = |v: &'m Value, ty: Option<&'static str>| match v {
        Value::Array(items) => items.iter().filter(|v| !v.is_null()).for_each(|v| push(v, ty)),
        Value::Null => {}
        v => push(v, ty),
    };
    if let Some(v) = map.get(name) {
        flat(v, None);
        return;
    }
    for (key, v) in map {
        // The capital that starts a type name comes right after the name (checked first: it
        // rejects almost every key without comparing strings).
        let spelt = key.as_bytes().get(name.len()).is_some_and(u8::is_ascii_uppercase)
            && key.starts_with(name);
        if let Some(ty) = spelt.then(|| choice_type(&key[name.len()..])).flatten() {
            flat(v, Some(ty));
        }
    }
}

fn navigate<'a>(item: &Item<'a>, name: &str, out: &mut Vec<Item<'a>>, typed: bool) {
    let spellings = if typed { item.ty.and_then(|ty| model::element(ty, name)) } else { None };
    match &item.value {
        Cow::Borrowed(value) => {
            let value: &'a Value = value;
            if let Value::Object(map) = value {
                find(map, name, spellings, &mut |v, ty| out.push(Item::borrowed(v, ty)));
            }
        }
        Cow::Owned(Value::Object(map)) => {
            find(map, name, spellings, &mut |v, ty| {
                out.push(Item { value: Cow::Owned(v.clone()), ty })
            });
        }
        Cow::Owned(_) => {}
    }
}

/// The children `name` of `map`: by the model's `spellings` when there are some, else untyped.
fn find<'m>(
    map: &'m Map<String, Value>,
    name: &str,
    spellings: Option<&'static [(&'static str, &'static str)]>,
    push: &mut dyn FnMut(&'m Value, Option<&'static str>),
) {
    match spellings {
        Some(spellings) => typed_children(map, spellings, push),
        None => children(map, name, push),
    }
}

/// The members of `map` that are the JSON `spellings` of one element, typed by the model, arrays
/// flattened and nulls dropped. A `Resource` (`contained`) is typed by its `resourceType`.
fn typed_children<'m>(
    map: &'m Map<String, Value>,
    spellings: &'static [(&'static str, &'static str)],
    push: &mut dyn FnMut(&'m Value, Option<&'static str>),
) {
    let mut found = |ty: &'static str, v: &'m Value| {
        let mut one = |v: &'m Value| {
            let ty = match ty {
                "Resource" => v
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .and_then(|rt| ResourceType::parse(rt).ok())
                    .map_or(ty, |rt| rt.as_str()),
                _ => ty,
            };
            push(v, Some(ty));
        };
        match v {
            Value::Array(items) => items.iter().filter(|v| !v.is_null()).for_each(&mut one),
            Value::Null => {}
            v => one(v),
        }
    };
    // A choice element has many spellings and a (partly parsed) resource few members: look the
    // members up in the spellings then.
    if spellings.len() > 2 && spellings.len() > map.len() {
        for (key, v) in map {
            if let Some(&(_, ty)) = spellings.iter().find(|(k, _)| *k == key) {
                found(ty, v);
            }
        }
    } else {
        for &(key, ty) in spellings {
            if let Some(v) = map.get(key) {
                found(ty, v);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Evaluation
// ------------------------------------------------------------------------------------------------

/// A view constant: its value and FHIR type.
#[derive(Debug, Clone)]
pub(crate) struct Constant {
    pub(crate) value: Value,
    pub(crate) ty: &'static str,
}

/// What an expression can see besides its input.
#[derive(Debug)]
pub(crate) struct Env<'a> {
    /// `%resource`, and the resource `getResourceKey()` is usually invoked on.
    pub(crate) resource: &'a Value,
    pub(crate) constants: &'a [Constant],
    pub(crate) row_index: usize,
    /// Navigate typed items with the R4 element model ([`model`]), and let `as` filter a
    /// collection (search).
    pub(crate) typed: bool,
}

struct Scope<'s, 'a> {
    this: &'s [Item<'a>],
    index: Option<usize>,
}

/// Evaluates `expr` with `focus` as its input and `$this`.
pub(crate) fn evaluate<'a>(
    expr: &'a Expr,
    focus: Item<'a>,
    env: &Env<'a>,
) -> EvalResult<Vec<Item<'a>>> {
    let input = [focus];
    let scope = Scope { this: &input, index: None };
    eval(expr, &input, &scope, env, 0)
}

fn eval<'a>(
    expr: &'a Expr,
    focus: &[Item<'a>],
    scope: &Scope<'_, 'a>,
    env: &Env<'a>,
    depth: usize,
) -> EvalResult<Vec<Item<'a>>> {
    // The recursive cases only; the rest is in functions off the recursive path, so that the
    // frames on it stay small.
    if depth > MAX_DEPTH {
        return eval_err(format!("evaluation nested deeper than {MAX_DEPTH} levels"));
    }
    let d = depth + 1;
    match expr {
        Expr::Call(call) => apply(call, focus, scope, env, d),
        Expr::Path(base, name) => Ok(members(&eval(base, focus, scope, env, d)?, name, env.typed)),
        Expr::Invoke(base, call) => {
            let base = eval(base, focus, scope, env, d)?;
            apply(call, &base, scope, env, d)
        }
        Expr::Indexer(base, index) => {
            let base = eval(base, focus, scope, env, d)?;
            let index = eval(index, scope.this, scope, env, d)?;
            index_into(base, &index)
        }
        Expr::Negate(operand) => negate(&eval(operand, focus, scope, env, d)?),
        Expr::Binary(op, lhs, rhs) => binary(*op, lhs, rhs, focus, scope, env, d),
        Expr::Is(operand, ty) => type_operator(&eval(operand, focus, scope, env, d)?, ty, true),
        // R4's search expressions cast repeating elements (`(ActivityDefinition.useContext.value
        // as CodeableConcept)`): typed evaluation filters each item, as `ofType()` does.
        Expr::As(operand, ty) if env.typed => {
            let operand = eval(operand, focus, scope, env, d)?;
            Ok(operand.iter().filter_map(|item| item.filter_type(ty)).collect())
        }
        Expr::As(operand, ty) => type_operator(&eval(operand, focus, scope, env, d)?, ty, false),
        leaf => Ok(leaf_value(leaf, focus, scope, env)),
    }
}

/// The value of an expression without sub-expressions.
#[inline(never)]
fn leaf_value<'a>(
    expr: &'a Expr,
    focus: &[Item<'a>],
    scope: &Scope<'_, 'a>,
    env: &Env<'a>,
) -> Vec<Item<'a>> {
    match expr {
        Expr::Literal(value, ty) => vec![Item::borrowed(value, Some(*ty))],
        Expr::This => scope.this.to_vec(),
        Expr::Index => scope.index.map(|i| Item::integer(i as i64)).into_iter().collect(),
        Expr::RowIndex => vec![Item::integer(env.row_index as i64)],
        Expr::Constant(i) => env
            .constants
            .get(*i)
            .map(|c| Item::borrowed(&c.value, Some(c.ty)))
            .into_iter()
            .collect(),
        Expr::Resource => vec![Item::borrowed(env.resource, None)],
        Expr::Member(name) => {
            let mut out = Vec::new();
            // Only a capitalised name can be a type; element names start in lower case.
            let capitalised = name.starts_with(|c: char| c.is_ascii_uppercase());
            for item in focus {
                let names_the_focus = || {
                    let resource_type = item.json().get("resourceType").and_then(Value::as_str);
                    resource_type == Some(name.as_str())
                        || env.typed && item.ty == Some(name.as_str())
                        || resource_type.is_some()
                            && matches!(name.as_str(), "Resource" | "DomainResource")
                };
                let is_type_prefix =
                    capitalised && names_the_focus() && item.json().get(name.as_str()).is_none();
                if is_type_prefix {
                    out.push(item.clone());
                } else {
                    navigate(item, name, &mut out, env.typed);
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

#[inline(never)]
fn members<'a>(items: &[Item<'a>], name: &str, typed: bool) -> Vec<Item<'a>> {
    let mut out = Vec::new();
    for item in items {
        navigate(item, name, &mut out, typed);
    }
    out
}

#[inline(never)]
fn index_into<'a>(base: Vec<Item<'a>>, index: &[Item<'a>]) -> EvalResult<Vec<Item<'a>>> {
    Ok(match integer_arg(index, "an index")? {
        None => Vec::new(),
        Some(i) => {
            usize::try_from(i).ok().and_then(|i| base.into_iter().nth(i)).into_iter().collect()
        }
    })
}

#[inline(never)]
fn negate<'a>(operand: &[Item<'a>]) -> EvalResult<Vec<Item<'a>>> {
    match singleton(operand, "the operand of unary '-'")? {
        None => Ok(Vec::new()),
        Some(item) => match item.number()? {
            Some(Num::Int(i)) => match i.checked_neg() {
                Some(n) => Ok(vec![Item::integer(n)]),
                None => eval_err("integer overflow"),
            },
            Some(Num::Dec(x)) => Ok(vec![Item::decimal(x.neg())]),
            None => eval_err(format!("unary '-' needs a number, got a {}", kind_name(item.json()))),
        },
    }
}

/// `is` (`test`) or `as`.
#[inline(never)]
fn type_operator<'a>(operand: &[Item<'a>], ty: &str, test: bool) -> EvalResult<Vec<Item<'a>>> {
    let item =
        singleton(operand, if test { "the operand of 'is'" } else { "the operand of 'as'" })?;
    Ok(match (item, test) {
        (None, _) => Vec::new(),
        (Some(item), true) => vec![Item::boolean(is_type(item, ty))],
        (Some(item), false) => item.filter_type(ty).into_iter().collect(),
    })
}

impl<'a> Item<'a> {
    fn filter_type(&self, ty: &str) -> Option<Item<'a>> {
        if is_type(self, ty) { Some(self.clone()) } else { None }
    }
}

fn singleton<'i, 'a>(items: &'i [Item<'a>], what: &str) -> EvalResult<Option<&'i Item<'a>>> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => eval_err(format!("{what} must be a single value, got {} values", many.len())),
    }
}

/// FHIRPath's singleton evaluation to a boolean: empty is unknown, a boolean is itself, any other
/// single value is `true`, several values are an error.
fn to_bool(items: &[Item<'_>], what: &str) -> EvalResult<Option<bool>> {
    Ok(singleton(items, what)?.map(|item| item.json().as_bool().unwrap_or(true)))
}

fn integer_arg(items: &[Item<'_>], what: &str) -> EvalResult<Option<i64>> {
    match singleton(items, what)? {
        None => Ok(None),
        Some(item) => match item.number()? {
            Some(Num::Int(i)) => Ok(Some(i)),
            _ => eval_err(format!("{what} must be an integer")),
        },
    }
}

fn string_arg(items: &[Item<'_>], what: &str) -> EvalResult<Option<String>> {
    match singleton(items, what)? {
        None => Ok(None),
        Some(item) => match item.as_str() {
            Some(s) => Ok(Some(s.to_owned())),
            None => eval_err(format!("{what} must be a string, got a {}", kind_name(item.json()))),
        },
    }
}

/// Evaluates a lambda argument (`where`, `select`, ...) on one item.
fn on_item<'a>(
    expr: &'a Expr,
    item: &Item<'a>,
    index: usize,
    env: &Env<'a>,
    depth: usize,
) -> EvalResult<Vec<Item<'a>>> {
    let this = [item.clone()];
    let scope = Scope { this: &this, index: Some(index) };
    eval(expr, &this, &scope, env, depth)
}

fn bools(items: &[Item<'_>], function: &str) -> EvalResult<Vec<bool>> {
    items
        .iter()
        .map(|item| match item.json() {
            Value::Bool(b) => Ok(*b),
            other => eval_err(format!("{function}() needs booleans, got a {}", kind_name(other))),
        })
        .collect()
}

fn apply<'a>(
    call: &'a Call,
    input: &[Item<'a>],
    scope: &Scope<'_, 'a>,
    env: &Env<'a>,
    d: usize,
) -> EvalResult<Vec<Item<'a>>> {
    match call {
        Call::Exists(Some(criterion))
        | Call::All(criterion)
        | Call::Where(criterion)
        | Call::Select(criterion) => lambda(call, criterion, input, env, d),
        Call::Iif(criterion, then, otherwise) => {
            singleton(input, "the input of iif()")?;
            let inner = Scope { this: input, index: scope.index };
            let criterion = eval(criterion, input, &inner, env, d)?;
            let branch = if to_bool(&criterion, "the criterion of iif()")? == Some(true) {
                Some(then)
            } else {
                otherwise.as_ref()
            };
            match branch {
                Some(expr) => eval(expr, input, &inner, env, d),
                None => Ok(Vec::new()),
            }
        }
        Call::Resolve => Ok(resolve(input, env)),
        _ => match call.outer_argument() {
            Some(arg) => {
                let arg = eval(arg, scope.this, scope, env, d)?;
                simple(call, input, &arg)
            }
            None => simple(call, input, &[]),
        },
    }
}

/// `resolve()` without a server (see the module notes): contained resources, or stand-ins that
/// carry only the target type.
fn resolve<'a>(input: &[Item<'a>], env: &Env<'a>) -> Vec<Item<'a>> {
    static STAND_IN: Value = Value::Null;
    let mut out = Vec::new();
    for item in input {
        let Cow::Borrowed(reference) = &item.value else { continue };
        let reference: &'a Value = reference;
        match reference_target(reference, env.resource) {
            Some(Target::Contained(resource, ty)) => out.push(Item::borrowed(resource, Some(ty))),
            Some(Target::Type(ty)) => out.push(Item::borrowed(&STAND_IN, Some(ty))),
            None => {}
        }
    }
    out
}

/// What a Reference points at, as far as it can be told without a server.
enum Target<'a> {
    /// A resource contained in the root resource (`#id`), and its type.
    Contained(&'a Value, &'static str),
    /// A resource of this type elsewhere.
    Type(&'static str),
}

/// The target of `reference` (a Reference object) in `root`: from a literal `reference`
/// (`Type/id`, an absolute URL ending in `Type/id[/_history/v]`, or `#id` of a contained
/// resource), else from `Reference.type` (`Patient` or its StructureDefinition URL). `None` when
/// it cannot be told (`urn:uuid:…` without a `type`, an unknown type).
fn reference_target<'a>(reference: &'a Value, root: &'a Value) -> Option<Target<'a>> {
    let known = |name: &str| ResourceType::parse(name).ok().map(|t| t.as_str());
    if let Some(literal) = reference.get("reference").and_then(Value::as_str) {
        if let Some(local_id) = literal.strip_prefix('#') {
            let contained = root.get("contained").and_then(Value::as_array)?;
            let resource =
                contained.iter().find(|r| r.get("id").and_then(Value::as_str) == Some(local_id))?;
            let ty = resource.get("resourceType").and_then(Value::as_str).and_then(known)?;
            return Some(Target::Contained(resource, ty));
        }
        if let Some((resource_type, _)) = crate::search::split_reference(literal) {
            return known(resource_type).map(Target::Type);
        }
    }
    let declared = reference.get("type").and_then(Value::as_str)?;
    let name = declared.rsplit('/').next().unwrap_or(declared);
    known(name).map(Target::Type)
}

/// `exists(criterion)`, `all(criterion)`, `where(criterion)`, `select(projection)`.
fn lambda<'a>(
    call: &'a Call,
    criterion: &'a Expr,
    input: &[Item<'a>],
    env: &Env<'a>,
    d: usize,
) -> EvalResult<Vec<Item<'a>>> {
    let mut out = Vec::new();
    for (i, item) in input.iter().enumerate() {
        let result = on_item(criterion, item, i, env, d)?;
        match call {
            Call::Select(_) => out.extend(result),
            Call::Where(_) => {
                if to_bool(&result, "the criterion of where()")? == Some(true) {
                    out.push(item.clone());
                }
            }
            Call::Exists(_) => {
                if to_bool(&result, "the criterion of exists()")? == Some(true) {
                    return Ok(vec![Item::boolean(true)]);
                }
            }
            _ => {
                if to_bool(&result, "the criterion of all()")? != Some(true) {
                    return Ok(vec![Item::boolean(false)]);
                }
            }
        }
    }
    Ok(match call {
        Call::Exists(_) => vec![Item::boolean(false)],
        Call::All(_) => vec![Item::boolean(true)],
        _ => out,
    })
}

/// The functions that evaluate no expression per item; `arg` is their evaluated argument.
#[inline(never)]
fn simple<'a>(call: &'a Call, input: &[Item<'a>], arg: &[Item<'a>]) -> EvalResult<Vec<Item<'a>>> {
    let one = |b: bool| -> EvalResult<Vec<Item<'a>>> { Ok(vec![Item::boolean(b)]) };
    match call {
        Call::Exists(Some(_))
        | Call::All(_)
        | Call::Where(_)
        | Call::Select(_)
        | Call::Iif(..)
        | Call::Resolve => {
            eval_err("internal error: a function evaluated by apply() reached simple()")
        }
        Call::Empty => one(input.is_empty()),
        Call::Exists(None) => one(!input.is_empty()),
        Call::AllTrue => one(bools(input, "allTrue")?.iter().all(|b| *b)),
        Call::AnyTrue => one(bools(input, "anyTrue")?.iter().any(|b| *b)),
        Call::AllFalse => one(bools(input, "allFalse")?.iter().all(|b| !*b)),
        Call::AnyFalse => one(bools(input, "anyFalse")?.iter().any(|b| !*b)),
        Call::Count => Ok(vec![Item::integer(input.len() as i64)]),
        Call::Distinct => Ok(distinct(input.to_vec())),
        Call::First => Ok(input.first().cloned().into_iter().collect()),
        Call::Last => Ok(input.last().cloned().into_iter().collect()),
        Call::Tail => Ok(input.iter().skip(1).cloned().collect()),
        Call::Skip(_) => {
            let n = integer_arg(arg, "the argument of skip()")?.unwrap_or(0);
            Ok(input.iter().skip(usize::try_from(n).unwrap_or(0)).cloned().collect())
        }
        Call::Take(_) => {
            let n = integer_arg(arg, "the argument of take()")?.unwrap_or(0);
            Ok(input.iter().take(usize::try_from(n).unwrap_or(0)).cloned().collect())
        }
        Call::Single => {
            Ok(singleton(input, "the input of single()")?.cloned().into_iter().collect())
        }
        Call::Not => Ok(to_bool(input, "the input of not()")?
            .map(|b| Item::boolean(!b))
            .into_iter()
            .collect()),
        Call::OfType(ty) => Ok(input.iter().filter(|item| is_type(item, ty)).cloned().collect()),
        Call::Is(ty) => Ok(singleton(input, "the input of is()")?
            .map(|item| Item::boolean(is_type(item, ty)))
            .into_iter()
            .collect()),
        Call::As(ty) => Ok(singleton(input, "the input of as()")?
            .filter(|item| is_type(item, ty))
            .cloned()
            .into_iter()
            .collect()),
        Call::Extension(_) => {
            let Some(url) = string_arg(arg, "the url of extension()")? else {
                return Ok(Vec::new());
            };
            let mut extensions = Vec::new();
            for item in input {
                navigate(item, "extension", &mut extensions, false);
            }
            extensions
                .retain(|ext| ext.json().get("url").and_then(Value::as_str) == Some(url.as_str()));
            Ok(extensions)
        }
        Call::Join(separator) => {
            let separator = match separator {
                Some(_) => string_arg(arg, "the separator of join()")?.unwrap_or_default(),
                None => String::new(),
            };
            let mut parts = Vec::with_capacity(input.len());
            for item in input {
                match primitive_string(item) {
                    Some(s) => parts.push(s),
                    None => {
                        return eval_err(format!(
                            "join() needs primitive values, got a {}",
                            kind_name(item.json())
                        ));
                    }
                }
            }
            Ok(vec![Item::string(parts.join(&separator), "string")])
        }
        Call::GetResourceKey => Ok(input
            .iter()
            .filter(|item| item.json().get("resourceType").is_some())
            .filter_map(|item| child(item, "id"))
            .filter(|id| id.json().is_string())
            .collect()),
        Call::GetReferenceKey(ty) => {
            let mut out = Vec::new();
            for item in input {
                let Some(reference) = item.json().get("reference").and_then(Value::as_str) else {
                    continue;
                };
                if let Some(key) = reference_key(reference, ty.as_deref()) {
                    out.push(Item::string(key.to_owned(), "string"));
                }
            }
            Ok(out)
        }
        Call::LowBoundary(precision) | Call::HighBoundary(precision) => {
            let high = matches!(call, Call::HighBoundary(_));
            let precision = match precision {
                Some(_) => match integer_arg(arg, "the precision of lowBoundary()/highBoundary()")?
                {
                    Some(p) => Some(p),
                    None => return Ok(Vec::new()),
                },
                None => None,
            };
            match singleton(input, "the input of lowBoundary()/highBoundary()")? {
                None => Ok(Vec::new()),
                Some(item) => Ok(boundary(item, high, precision)?.into_iter().collect()),
            }
        }
        Call::HasValue => one(matches!(
            singleton(input, "the input of hasValue()").ok().flatten().map(Item::json),
            Some(Value::Bool(_) | Value::Number(_) | Value::String(_))
        )),
        Call::ToString => match singleton(input, "the input of toString()")? {
            None => Ok(Vec::new()),
            Some(item) => {
                Ok(primitive_string(item).map(|s| Item::string(s, "string")).into_iter().collect())
            }
        },
        Call::ToInteger => match singleton(input, "the input of toInteger()")? {
            None => Ok(Vec::new()),
            Some(item) => Ok(match item.json() {
                Value::Bool(b) => Some(i64::from(*b)),
                Value::String(s) => s.parse::<i64>().ok(),
                Value::Number(_) => match item.number()? {
                    Some(Num::Int(i)) => Some(i),
                    _ => None,
                },
                _ => None,
            }
            .map(Item::integer)
            .into_iter()
            .collect()),
        },
        Call::ToDecimal => match singleton(input, "the input of toDecimal()")? {
            None => Ok(Vec::new()),
            Some(item) => Ok(match item.json() {
                Value::Bool(b) => Some(Decimal { mant: i128::from(*b), scale: 1 }),
                Value::String(s) => Decimal::parse_plain(s),
                Value::Number(n) => Decimal::from_number(n),
                _ => None,
            }
            .map(Item::decimal)
            .into_iter()
            .collect()),
        },
        Call::Length => string_fn(input, "length", |s| Item::integer(s.chars().count() as i64)),
        Call::Upper => string_fn(input, "upper", |s| Item::string(s.to_uppercase(), "string")),
        Call::Lower => string_fn(input, "lower", |s| Item::string(s.to_lowercase(), "string")),
        Call::StartsWith(_) | Call::EndsWith(_) | Call::Contains(_) => {
            let Some(other) =
                string_arg(arg, "the argument of startsWith()/endsWith()/contains()")?
            else {
                return Ok(Vec::new());
            };
            string_fn(input, "startsWith/endsWith/contains", |s| {
                Item::boolean(match call {
                    Call::StartsWith(_) => s.starts_with(&other),
                    Call::EndsWith(_) => s.ends_with(&other),
                    _ => s.contains(&other),
                })
            })
        }
    }
}

/// The member `key` of an object item, borrowed when the item is.
fn child<'a>(item: &Item<'a>, key: &str) -> Option<Item<'a>> {
    match &item.value {
        Cow::Borrowed(value) => {
            let value: &'a Value = value;
            value.get(key).map(|v| Item::borrowed(v, None))
        }
        Cow::Owned(value) => {
            value.get(key).map(|v| Item { value: Cow::Owned(v.clone()), ty: None })
        }
    }
}

fn string_fn<'a>(
    input: &[Item<'a>],
    function: &str,
    f: impl Fn(&str) -> Item<'a>,
) -> EvalResult<Vec<Item<'a>>> {
    match singleton(input, &format!("the input of {function}()"))? {
        None => Ok(Vec::new()),
        Some(item) => match item.as_str() {
            Some(s) => Ok(vec![f(s)]),
            None => {
                eval_err(format!("{function}() needs a string, got a {}", kind_name(item.json())))
            }
        },
    }
}

fn primitive_string(item: &Item<'_>) -> Option<String> {
    match item.json() {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The key `getReferenceKey()` returns for a reference: the id of a relative literal reference
/// `Type/id` (or `Type/id/_history/version`), when `Type` is `want` if given. Absolute URLs,
/// `urn:` and `#contained` references have no key here.
pub(crate) fn reference_key<'r>(reference: &'r str, want: Option<&str>) -> Option<&'r str> {
    let mut parts = reference.split('/');
    let ty = parts.next()?;
    let id = parts.next()?;
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => {}
        (Some("_history"), Some(version), None) if !version.is_empty() => {}
        _ => return None,
    }
    let valid_type = ty.starts_with(|c: char| c.is_ascii_uppercase())
        && ty.chars().all(|c| c.is_ascii_alphanumeric());
    let valid_id = (1..=64).contains(&id.len())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid_type || !valid_id || want.is_some_and(|want| want != ty) {
        return None;
    }
    Some(id)
}

fn distinct(items: Vec<Item<'_>>) -> Vec<Item<'_>> {
    let mut out: Vec<Item<'_>> = Vec::with_capacity(items.len());
    for item in items {
        if !out.iter().any(|seen| equals(seen, &item) == Some(true)) {
            out.push(item);
        }
    }
    out
}

fn binary<'a>(
    op: BinOp,
    lhs: &'a Expr,
    rhs: &'a Expr,
    focus: &[Item<'a>],
    scope: &Scope<'_, 'a>,
    env: &Env<'a>,
    d: usize,
) -> EvalResult<Vec<Item<'a>>> {
    let left = eval(lhs, focus, scope, env, d)?;
    if matches!(op, BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Implies) {
        // Short-circuit where the left side decides.
        let l = to_bool(&left, "an operand of a logical operator")?;
        let decided = match (op, l) {
            (BinOp::And, Some(false)) => Some(false),
            (BinOp::Or, Some(true)) => Some(true),
            (BinOp::Implies, Some(false)) => Some(true),
            _ => None,
        };
        if let Some(b) = decided {
            return Ok(vec![Item::boolean(b)]);
        }
        let right = eval(rhs, focus, scope, env, d)?;
        return logic(op, l, &right);
    }
    let right = eval(rhs, focus, scope, env, d)?;
    combine(op, left, right)
}

/// A logical operator whose left side did not decide.
#[inline(never)]
fn logic<'a>(op: BinOp, l: Option<bool>, right: &[Item<'a>]) -> EvalResult<Vec<Item<'a>>> {
    let r = to_bool(right, "an operand of a logical operator")?;
    let result = match op {
        BinOp::And => match (l, r) {
            (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        BinOp::Or => match (l, r) {
            (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        BinOp::Xor => l.zip(r).map(|(l, r)| l != r),
        _ => match (l, r) {
            (Some(true), r) => r,
            (None, Some(true)) => Some(true),
            _ => None,
        },
    };
    Ok(result.map(Item::boolean).into_iter().collect())
}

/// The operators other than the logical ones.
#[inline(never)]
fn combine<'a>(op: BinOp, left: Vec<Item<'a>>, right: Vec<Item<'a>>) -> EvalResult<Vec<Item<'a>>> {
    let boolean = |b: Option<bool>| -> EvalResult<Vec<Item<'a>>> {
        Ok(b.map(Item::boolean).into_iter().collect())
    };
    match op {
        BinOp::Union => {
            let mut all = left;
            all.extend(right);
            Ok(distinct(all))
        }
        BinOp::Eq | BinOp::Ne => {
            if left.is_empty() || right.is_empty() {
                return Ok(Vec::new());
            }
            let eq = collection_equals(&left, &right);
            boolean(if op == BinOp::Eq { eq } else { eq.map(|b| !b) })
        }
        BinOp::Equiv | BinOp::NotEquiv => {
            let eq =
                left.len() == right.len() && left.iter().zip(&right).all(|(l, r)| equivalent(l, r));
            boolean(Some(if op == BinOp::Equiv { eq } else { !eq }))
        }
        BinOp::In | BinOp::Contains => {
            let (needle, haystack) =
                if op == BinOp::In { (&left, &right) } else { (&right, &left) };
            match singleton(needle, "the single side of 'in'/'contains'")? {
                None => Ok(Vec::new()),
                Some(needle) => {
                    boolean(Some(haystack.iter().any(|item| equals(item, needle) == Some(true))))
                }
            }
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let (Some(l), Some(r)) = (
                singleton(&left, "an operand of a comparison")?,
                singleton(&right, "an operand of a comparison")?,
            ) else {
                return Ok(Vec::new());
            };
            let ordering = compare(l, r)?;
            boolean(ordering.map(|o| match op {
                BinOp::Lt => o == Ordering::Less,
                BinOp::Le => o != Ordering::Greater,
                BinOp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }))
        }
        BinOp::Concat => {
            let text = |items: &[Item<'_>]| -> EvalResult<String> {
                match singleton(items, "an operand of '&'")? {
                    None => Ok(String::new()),
                    Some(item) => match primitive_string(item) {
                        Some(s) => Ok(s),
                        None => {
                            eval_err(format!("'&' needs strings, got a {}", kind_name(item.json())))
                        }
                    },
                }
            };
            Ok(vec![Item::string(text(&left)? + &text(&right)?, "string")])
        }
        _ => arithmetic(op, &left, &right),
    }
}

fn arithmetic<'a>(op: BinOp, left: &[Item<'a>], right: &[Item<'a>]) -> EvalResult<Vec<Item<'a>>> {
    let (Some(l), Some(r)) =
        (singleton(left, "an arithmetic operand")?, singleton(right, "an arithmetic operand")?)
    else {
        return Ok(Vec::new());
    };
    if op == BinOp::Add
        && let (Some(a), Some(b)) = (l.as_str(), r.as_str())
    {
        return Ok(vec![Item::string(format!("{a}{b}"), "string")]);
    }
    let (Some(a), Some(b)) = (l.number()?, r.number()?) else {
        return eval_err(format!(
            "arithmetic needs numbers (or two strings for '+'), got a {} and a {}",
            kind_name(l.json()),
            kind_name(r.json())
        ));
    };
    let overflow = || EvalError { message: "arithmetic overflow".to_owned() };
    if let (Num::Int(a), Num::Int(b)) = (a, b) {
        let result = match op {
            BinOp::Add => a.checked_add(b),
            BinOp::Sub => a.checked_sub(b),
            BinOp::Mul => a.checked_mul(b),
            BinOp::IntDiv if b == 0 => return Ok(Vec::new()),
            BinOp::IntDiv => a.checked_div(b),
            BinOp::Mod if b == 0 => return Ok(Vec::new()),
            BinOp::Mod => a.checked_rem(b),
            _ => {
                return match Decimal::from_i64(a).div(Decimal::from_i64(b)) {
                    Ok(Some(q)) => Ok(vec![Item::decimal(q)]),
                    Ok(None) => Ok(Vec::new()),
                    Err(()) => Err(overflow()),
                };
            }
        };
        return result.map(|i| vec![Item::integer(i)]).ok_or_else(overflow);
    }
    let (a, b) = (a.to_decimal(), b.to_decimal());
    let result = match op {
        BinOp::Add => a.add(b).map(Some),
        BinOp::Sub => a.add(b.neg()).map(Some),
        BinOp::Mul => a.mul(b).map(Some),
        BinOp::Div => a.div(b),
        BinOp::IntDiv => a.div_trunc(b).map(|q| q.map(|q| Decimal { mant: q, scale: 0 })),
        BinOp::Mod => a.rem(b),
        _ => return eval_err("unsupported operator"),
    };
    match result {
        Ok(Some(x)) if op == BinOp::IntDiv => match x.to_i64() {
            Some(i) => Ok(vec![Item::integer(i)]),
            None => Err(overflow()),
        },
        Ok(Some(x)) => Ok(vec![Item::decimal(x)]),
        Ok(None) => Ok(Vec::new()),
        Err(()) => Err(overflow()),
    }
}

/// FHIRPath `=` on two collections of equal, non-zero length: `None` when unknown.
fn collection_equals(left: &[Item<'_>], right: &[Item<'_>]) -> Option<bool> {
    if left.len() != right.len() {
        return Some(false);
    }
    let mut unknown = false;
    for (l, r) in left.iter().zip(right) {
        match equals(l, r) {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    if unknown { None } else { Some(true) }
}

/// FHIRPath `=` on two items: `None` when unknown (dates at different precisions).
fn equals(l: &Item<'_>, r: &Item<'_>) -> Option<bool> {
    match (l.json(), r.json()) {
        (Value::String(a), Value::String(b)) => {
            if let Some(kind) = l.temporal_type().or(r.temporal_type())
                && let (Some(x), Some(y)) =
                    (Temporal::parse_as(a, kind), Temporal::parse_as(b, kind))
            {
                return match x.compare(&y) {
                    TemporalOrdering::Known(o) => Some(o == Ordering::Equal),
                    TemporalOrdering::Unknown => None,
                    TemporalOrdering::Incomparable => Some(false),
                };
            }
            Some(a == b)
        }
        (a, b) => Some(json_equals(a, b)),
    }
}

fn json_equals(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (Decimal::from_number(x), Decimal::from_number(y)) {
                (Some(x), Some(y)) => x.cmp(y) == Ordering::Equal,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equals(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equals(v, w)))
        }
        _ => a == b,
    }
}

/// FHIRPath `~`: like `=`, but strings ignore case and spacing and unknown is `false`.
fn equivalent(l: &Item<'_>, r: &Item<'_>) -> bool {
    if l.temporal_type().is_none()
        && r.temporal_type().is_none()
        && let (Some(a), Some(b)) = (l.as_str(), r.as_str())
    {
        let normal = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        return normal(a) == normal(b);
    }
    equals(l, r) == Some(true)
}

/// FHIRPath ordering of two single items: `None` when unknown; an error for values of different
/// kinds or kinds without an order.
fn compare(l: &Item<'_>, r: &Item<'_>) -> EvalResult<Option<Ordering>> {
    if let (Some(a), Some(b)) = (l.number()?, r.number()?) {
        return Ok(Some(a.to_decimal().cmp(b.to_decimal())));
    }
    if let (Some(a), Some(b)) = (l.as_str(), r.as_str()) {
        if let Some(kind) = l.temporal_type().or(r.temporal_type())
            && let (Some(x), Some(y)) = (Temporal::parse_as(a, kind), Temporal::parse_as(b, kind))
        {
            return match x.compare(&y) {
                TemporalOrdering::Known(o) => Ok(Some(o)),
                TemporalOrdering::Unknown => Ok(None),
                TemporalOrdering::Incomparable => {
                    eval_err(format!("cannot compare '{a}' and '{b}'"))
                }
            };
        }
        return Ok(Some(a.cmp(b)));
    }
    eval_err(format!("cannot compare a {} with a {}", kind_name(l.json()), kind_name(r.json())))
}

// ------------------------------------------------------------------------------------------------
// Numbers
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Dec(Decimal),
}

impl Num {
    fn to_decimal(self) -> Decimal {
        match self {
            Num::Int(i) => Decimal::from_i64(i),
            Num::Dec(d) => d,
        }
    }
}

/// An exact decimal: `mant × 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decimal {
    mant: i128,
    scale: u32,
}

/// Most fractional digits a decimal keeps.
const MAX_SCALE: u32 = 30;
/// Fractional digits a quotient is computed to.
const DIVISION_SCALE: u32 = 16;

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

impl Decimal {
    fn from_i64(i: i64) -> Self {
        Decimal { mant: i128::from(i), scale: 0 }
    }

    pub(crate) fn from_number(n: &Number) -> Option<Self> {
        if let Some(i) = n.as_i64() {
            return Some(Decimal::from_i64(i));
        }
        Decimal::parse(&n.to_string())
    }

    /// Parses JSON number text: `-12.50`, `1e-7`, `1.5E+3`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (body, exponent) = match text.find(['e', 'E']) {
            Some(at) => (&text[..at], text[at + 1..].parse::<i32>().ok()?),
            None => (text, 0),
        };
        let (negative, body) = match body.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, body),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        if int.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut mant: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mant = mant.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
        }
        let mut scale = i64::try_from(frac.len()).ok()? - i64::from(exponent);
        if scale < 0 {
            mant = mant.checked_mul(pow10(u32::try_from(-scale).ok()?)?)?;
            scale = 0;
        }
        let scale = u32::try_from(scale).ok()?;
        if scale > 2 * MAX_SCALE {
            return None;
        }
        Some(Decimal { mant: if negative { -mant } else { mant }, scale })
    }

    /// Parses FHIRPath decimal text (`toDecimal()`): digits with an optional sign and fraction.
    fn parse_plain(text: &str) -> Option<Self> {
        let body = text.strip_prefix('+').unwrap_or(text);
        if body.contains(['e', 'E']) {
            return None;
        }
        Decimal::parse(body)
    }

    fn neg(self) -> Self {
        Decimal { mant: -self.mant, scale: self.scale }
    }

    fn to_i64(self) -> Option<i64> {
        if self.scale == 0 { i64::try_from(self.mant).ok() } else { None }
    }

    /// The same value with `scale` fractional digits (`scale` ≥ the current one).
    fn rescale(self, scale: u32) -> Option<Self> {
        let factor = pow10(scale.checked_sub(self.scale)?)?;
        Some(Decimal { mant: self.mant.checked_mul(factor)?, scale })
    }

    fn aligned(a: Self, b: Self) -> Option<(i128, i128, u32)> {
        let scale = a.scale.max(b.scale);
        Some((a.rescale(scale)?.mant, b.rescale(scale)?.mant, scale))
    }

    fn cmp(self, other: Self) -> Ordering {
        match Decimal::aligned(self, other) {
            Some((a, b, _)) => a.cmp(&b),
            None => self.to_f64().total_cmp(&other.to_f64()),
        }
    }

    fn to_f64(self) -> f64 {
        self.to_string().parse().unwrap_or(f64::NAN)
    }

    fn add(self, other: Self) -> Result<Self, ()> {
        let (a, b, scale) = Decimal::aligned(self, other).ok_or(())?;
        Ok(Decimal { mant: a.checked_add(b).ok_or(())?, scale })
    }

    fn mul(self, other: Self) -> Result<Self, ()> {
        let product = Decimal {
            mant: self.mant.checked_mul(other.mant).ok_or(())?,
            scale: self.scale + other.scale,
        };
        Ok(product.round_to(MAX_SCALE.min(product.scale)))
    }

    /// Rounds half away from zero to `scale` digits (`scale` ≤ the current one).
    fn round_to(self, scale: u32) -> Self {
        let Some(factor) = self.scale.checked_sub(scale).and_then(pow10) else { return self };
        let q = self.mant / factor;
        let r = self.mant % factor;
        let q = if r.abs() * 2 >= factor { q + self.mant.signum() } else { q };
        Decimal { mant: q, scale }
    }

    /// `self / other` to [`DIVISION_SCALE`] digits, trailing zeros dropped (one kept); `None`
    /// for division by zero.
    fn div(self, other: Self) -> Result<Option<Self>, ()> {
        if other.mant == 0 {
            return Ok(None);
        }
        let scale = DIVISION_SCALE.max(self.scale);
        // (a / 10^sa) / (b / 10^sb) = (a * 10^(scale + sb - sa) / b) / 10^scale
        let shift = scale + other.scale - self.scale;
        let numerator = self.mant.checked_mul(pow10(shift).ok_or(())?).ok_or(())?;
        let mut q = numerator / other.mant;
        let r = numerator % other.mant;
        if r.abs().checked_mul(2).ok_or(())? >= other.mant.abs() {
            q += if (numerator < 0) == (other.mant < 0) { 1 } else { -1 };
        }
        let mut result = Decimal { mant: q, scale };
        while result.scale > 1 && result.mant % 10 == 0 {
            result = Decimal { mant: result.mant / 10, scale: result.scale - 1 };
        }
        Ok(Some(result))
    }

    /// Truncated quotient, for `div`.
    fn div_trunc(self, other: Self) -> Result<Option<i128>, ()> {
        if other.mant == 0 {
            return Ok(None);
        }
        let (a, b, _) = Decimal::aligned(self, other).ok_or(())?;
        Ok(Some(a / b))
    }

    /// Remainder with the sign of the dividend, for `mod`.
    fn rem(self, other: Self) -> Result<Option<Self>, ()> {
        if other.mant == 0 {
            return Ok(None);
        }
        let (a, b, scale) = Decimal::aligned(self, other).ok_or(())?;
        Ok(Some(Decimal { mant: a % b, scale }))
    }

    /// A JSON number: an integer when there is no fraction, else parsed from the decimal text
    /// (exact with `serde_json/arbitrary_precision`, the nearest `f64` without).
    pub(crate) fn to_value(self) -> Value {
        if self.scale == 0
            && let Ok(i) = i64::try_from(self.mant)
        {
            return Value::from(i);
        }
        let text = self.to_string();
        match serde_json::from_str::<Number>(&text) {
            Ok(n) => Value::Number(n),
            Err(_) => Number::from_f64(self.to_f64()).map_or(Value::Null, Value::Number),
        }
    }

    /// The boundary of the range of values this decimal stands for (half a unit of its last
    /// digit either side), to `precision` digits when given (rounded outwards); `None` for a
    /// precision outside 0..=28.
    fn boundary(self, high: bool, precision: Option<i64>) -> Option<Self> {
        let scale = self.scale + 1;
        let mant = self.mant.checked_mul(10)?;
        let exact =
            Decimal { mant: if high { mant.checked_add(5)? } else { mant.checked_sub(5)? }, scale };
        let Some(precision) = precision else { return Some(exact) };
        let precision = u32::try_from(precision).ok().filter(|p| *p <= 28)?;
        if precision >= scale {
            return exact.rescale(precision);
        }
        let factor = pow10(scale - precision)?;
        let floor = exact.mant.div_euclid(factor);
        let rem = exact.mant.rem_euclid(factor);
        let q = if high && rem != 0 { floor + 1 } else { floor };
        Some(Decimal { mant: q, scale: precision })
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.mant.unsigned_abs().to_string();
        let sign = if self.mant < 0 { "-" } else { "" };
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

// ------------------------------------------------------------------------------------------------
// Dates and times
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TemporalKind {
    Date,
    DateTime,
    Time,
}

/// A parsed date, dateTime or time. `fields` are year, month, day, hour, minute, second and
/// millisecond; a date or dateTime holds `fields[..end]`, a time `fields[3..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Temporal {
    fields: [i64; 7],
    end: usize,
    /// Digits written after the decimal point of the seconds (kept up to 3).
    frac_digits: u32,
    /// Offset in minutes, and whether it was written `Z`.
    tz: Option<(i32, bool)>,
    time_only: bool,
}

enum TemporalOrdering {
    Known(Ordering),
    /// Equal down to the coarser precision, or offsets unknown.
    Unknown,
    /// A time against a date.
    Incomparable,
}

fn two_digits(s: &str) -> Option<i64> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()) { s.parse().ok() } else { None }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Temporal {
    /// Whether this is a date (no time, at most day precision).
    pub(crate) fn is_date(&self) -> bool {
        !self.time_only && self.end <= 3
    }

    /// Whether this is a full instant: seconds and an offset.
    pub(crate) fn is_instant(&self) -> bool {
        !self.time_only && self.end >= 6 && self.tz.is_some()
    }

    fn parse_as(text: &str, kind: TemporalKind) -> Option<Temporal> {
        match kind {
            TemporalKind::Time => Temporal::parse_time(text),
            TemporalKind::Date | TemporalKind::DateTime => Temporal::parse_date_time(text),
        }
    }

    /// `YYYY[-MM[-DD[Thh[:mm[:ss[.fff]]][Z|±hh:mm]]]]`.
    pub(crate) fn parse_date_time(text: &str) -> Option<Temporal> {
        let (date, time) = match text.split_once('T') {
            Some((date, time)) => (date, Some(time)),
            None => (text, None),
        };
        let mut fields = [0i64; 7];
        let mut parts = date.split('-');
        let year = parts.next()?;
        if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        fields[0] = year.parse().ok()?;
        let mut end = 1;
        for part in parts {
            if end >= 3 {
                return None;
            }
            fields[end] = two_digits(part)?;
            end += 1;
        }
        if end >= 2 && !(1..=12).contains(&fields[1]) {
            return None;
        }
        if end >= 3 && !(1..=days_in_month(fields[0], fields[1])).contains(&fields[2]) {
            return None;
        }
        let mut result = Temporal { fields, end, frac_digits: 0, tz: None, time_only: false };
        if let Some(time) = time {
            if end != 3 || time.is_empty() {
                return None;
            }
            let (clock, tz) = match time.find(['Z', '+', '-']) {
                Some(at) => (&time[..at], Some(&time[at..])),
                None => (time, None),
            };
            result.parse_clock(clock)?;
            if let Some(tz) = tz {
                result.tz = Some(parse_offset(tz)?);
            }
        }
        Some(result)
    }

    /// `hh[:mm[:ss[.fff]]]`.
    pub(crate) fn parse_time(text: &str) -> Option<Temporal> {
        let mut result =
            Temporal { fields: [0; 7], end: 3, frac_digits: 0, tz: None, time_only: true };
        result.parse_clock(text)?;
        Some(result)
    }

    fn parse_clock(&mut self, text: &str) -> Option<()> {
        let (clock, frac) = match text.split_once('.') {
            Some((clock, frac)) => (clock, Some(frac)),
            None => (text, None),
        };
        let limits = [23, 59, 59];
        for (i, part) in clock.split(':').enumerate() {
            let value = two_digits(part)?;
            if i >= 3 || value > limits[i] {
                return None;
            }
            self.fields[3 + i] = value;
            self.end = 4 + i;
        }
        if let Some(frac) = frac {
            if self.end != 6 || frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let kept = &frac[..frac.len().min(3)];
            self.frac_digits = kept.len() as u32;
            self.fields[6] = format!("{kept:0<3}").parse().ok()?;
            self.end = 7;
        }
        Some(())
    }

    /// Compares down to the coarser precision (seconds and milliseconds are one precision).
    fn compare(&self, other: &Temporal) -> TemporalOrdering {
        if self.time_only != other.time_only {
            return TemporalOrdering::Incomparable;
        }
        let (mut a, mut b) = (*self, *other);
        let with_time = a.end > 3 && b.end > 3 && !a.time_only;
        match (a.tz, b.tz) {
            (Some(_), Some(_)) if with_time => {
                let (Some(x), Some(y)) = (a.to_utc(), b.to_utc()) else {
                    return TemporalOrdering::Unknown;
                };
                (a, b) = (x, y);
            }
            (Some(_), None) | (None, Some(_)) if with_time => return TemporalOrdering::Unknown,
            _ => {}
        }
        let start = if a.time_only { 3 } else { 0 };
        let level = |t: &Temporal| t.end.min(6);
        let common = level(&a).min(level(&b));
        for i in start..common {
            let (x, y) = if i == 5 {
                (a.fields[5] * 1000 + a.fields[6], b.fields[5] * 1000 + b.fields[6])
            } else {
                (a.fields[i], b.fields[i])
            };
            if x != y {
                return TemporalOrdering::Known(x.cmp(&y));
            }
        }
        if level(&a) == level(&b) {
            TemporalOrdering::Known(Ordering::Equal)
        } else {
            TemporalOrdering::Unknown
        }
    }

    /// The same instant at offset zero (only for values with a time).
    fn to_utc(self) -> Option<Temporal> {
        let (offset, _) = self.tz?;
        let f = self.fields;
        let date = chrono::NaiveDate::from_ymd_opt(
            i32::try_from(f[0]).ok()?,
            u32::try_from(f[1]).ok()?,
            u32::try_from(f[2]).ok()?,
        )?;
        let time = chrono::NaiveTime::from_hms_opt(
            u32::try_from(f[3]).ok()?,
            u32::try_from(f[4]).ok()?,
            0,
        )?;
        let utc = date
            .and_time(time)
            .checked_sub_signed(chrono::TimeDelta::try_minutes(i64::from(offset))?)?;
        let mut fields = f;
        fields[0] = i64::from(utc.year());
        fields[1] = i64::from(utc.month());
        fields[2] = i64::from(utc.day());
        fields[3] = i64::from(utc.hour());
        fields[4] = i64::from(utc.minute());
        Some(Temporal { fields, tz: Some((0, true)), ..self })
    }

    /// The earliest (or latest) value this one stands for, filled to millisecond precision.
    fn filled(&self, high: bool) -> [i64; 7] {
        let mut f = self.fields;
        let start = if self.time_only { 3 } else { 0 };
        for i in start.max(self.end)..7 {
            f[i] = match (i, high) {
                (_, false) if i == 1 || i == 2 => 1,
                (_, false) => 0,
                (1, true) => 12,
                (2, true) => days_in_month(f[0], f[1]),
                (3, true) => 23,
                (4 | 5, true) => 59,
                _ => 999,
            };
        }
        if self.end == 7 && high {
            // `.1` stands for .100 to .199.
            f[6] += 10i64.pow(3 - self.frac_digits.min(3)) - 1;
        }
        f
    }
}

fn parse_offset(tz: &str) -> Option<(i32, bool)> {
    if tz == "Z" {
        return Some((0, true));
    }
    let sign = match tz.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = tz[1..].split_once(':')?;
    let (h, m) = (two_digits(h)?, two_digits(m)?);
    if h > 14 || m > 59 {
        return None;
    }
    Some((sign * i32::try_from(h * 60 + m).ok()?, false))
}

fn format_offset((minutes, z): (i32, bool)) -> String {
    if z && minutes == 0 {
        return "Z".to_owned();
    }
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.unsigned_abs();
    format!("{sign}{:02}:{:02}", m / 60, m % 60)
}

/// `lowBoundary()` / `highBoundary()` of one item.
fn boundary<'a>(
    item: &Item<'a>,
    high: bool,
    precision: Option<i64>,
) -> EvalResult<Option<Item<'a>>> {
    if let Value::Number(_) = item.json() {
        if matches!(item.ty, Some("integer" | "positiveInt" | "unsignedInt" | "integer64")) {
            return Ok(Some(item.clone()));
        }
        return Ok(item
            .number()?
            .and_then(|n| n.to_decimal().boundary(high, precision))
            .map(Item::decimal));
    }
    let Some(text) = item.as_str() else { return Ok(None) };
    let kind = match item.temporal_type() {
        Some(kind) => kind,
        None if text.contains('T') => TemporalKind::DateTime,
        None if Temporal::parse_date_time(text).is_some() => TemporalKind::Date,
        None if Temporal::parse_time(text).is_some() => TemporalKind::Time,
        None => return Ok(None),
    };
    let Some(t) = Temporal::parse_as(text, kind) else { return Ok(None) };
    let f = t.filled(high);
    let date = |level: usize| match level {
        1 => format!("{:04}", f[0]),
        2 => format!("{:04}-{:02}", f[0], f[1]),
        _ => format!("{:04}-{:02}-{:02}", f[0], f[1], f[2]),
    };
    let clock = |level: usize| match level {
        4 => format!("{:02}", f[3]),
        5 => format!("{:02}:{:02}", f[3], f[4]),
        6 => format!("{:02}:{:02}:{:02}", f[3], f[4], f[5]),
        _ => format!("{:02}:{:02}:{:02}.{:03}", f[3], f[4], f[5], f[6]),
    };
    let text = match kind {
        TemporalKind::Date => match precision.unwrap_or(8) {
            4 => date(1),
            6 => date(2),
            8 => date(3),
            _ => return Ok(None),
        },
        TemporalKind::DateTime => {
            let level = match precision.unwrap_or(17) {
                4 => 1,
                6 => 2,
                8 => 3,
                10 => 4,
                12 => 5,
                14 => 6,
                17 => 7,
                _ => return Ok(None),
            };
            if level <= 3 {
                date(level)
            } else {
                let offset =
                    t.tz.unwrap_or(if high { (-12 * 60, false) } else { (14 * 60, false) });
                format!("{}T{}{}", date(3), clock(level), format_offset(offset))
            }
        }
        TemporalKind::Time => match precision.unwrap_or(9) {
            2 => clock(4),
            4 => clock(5),
            6 => clock(6),
            9 => clock(7),
            _ => return Ok(None),
        },
    };
    let ty = match kind {
        TemporalKind::Date => "date",
        TemporalKind::DateTime => "dateTime",
        TemporalKind::Time => "time",
    };
    Ok(Some(Item::string(text, ty)))
}
