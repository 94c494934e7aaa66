//! Which elements of a resource FHIRPath expressions can read, so that a caller holding the
//! resource as JSON text builds only those ([`super::project`]): a view
//! ([`ViewDefinition::parse_resource`]) or a search (`crate::search`).
//!
//! The analysis walks every expression and follows which element of the
//! resource each sub-expression can stand for: the resource itself (the focus of a top-level
//! select, `%resource`, a leading `Patient.`), an element navigated from one (`code.coding`), or
//! something else (a literal, a computed value). The result is a tree of element names. An
//! element is kept *whole* when its value is used as a value (a column, an operand, an argument,
//! a function that reads its content such as `join()` or `distinct()`), and otherwise only with
//! the children the view navigates to: its existence and the number of its repetitions are kept,
//! as `exists()`, `count()`, `first()` and `forEach` need. Type tests read the `resourceType`;
//! `getResourceKey()` the `id`; `getReferenceKey()` the `reference`; `extension(url)` the
//! extensions' `url`. A choice name (`value`) keeps every `value[x]`.
//!
//! `resolve()` reads the reference's `reference` and `type`, and the resource's `contained`.
//!
//! The analysis errs on the side of keeping: whenever the resource itself would be used as a
//! value, the answer is "everything" and the caller parses the whole resource. The official
//! SQL on FHIR test suite runs every view both ways and requires the same rows and the same
//! errors; the search tests run every query both ways.
//!
//! [`ViewDefinition::parse_resource`]: crate::view::ViewDefinition::parse_resource

use std::collections::BTreeMap;

use super::{Call, Expr};

/// The elements of a resource (or of an element) that a view can read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reads {
    /// Kept with everything in it.
    pub(crate) whole: bool,
    /// The children navigated to, by element name (a choice name stands for every `name[x]`).
    pub(crate) children: BTreeMap<String, Reads>,
}

impl Reads {
    /// The children of this element that a JSON member named `key` is an instance of: `key`
    /// itself, or the choice name it spells (`value` for `valueQuantity`).
    pub(crate) fn matching<'r>(&'r self, key: &'r str) -> impl Iterator<Item = &'r Reads> + 'r {
        self.children.iter().filter_map(move |(name, reads)| {
            let choice = key.strip_prefix(name.as_str()).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_uppercase())
            });
            choice.then_some(reads)
        })
    }

    /// The element at `path` below this one, created when missing.
    fn at(&mut self, path: &[String]) -> &mut Reads {
        path.iter().fold(self, |node, name| node.children.entry(name.clone()).or_default())
    }
}

/// The expressions read the resource whole.
#[derive(Debug)]
pub(crate) struct Whole;

/// What a sub-expression can stand for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Gives {
    /// Instances of the element at this path from the resource (the empty path: the resource).
    Element(Vec<String>),
    /// Something else: a literal, a computed value, or something inside an element kept whole.
    Other,
}

/// The elements that `exprs`, each evaluated on a resource of `resource_type` with its result
/// used as a value, can read, or `Whole` when they can read the resource whole. `resourceType`
/// and `id` are always kept.
pub(crate) fn expressions<'e>(
    resource_type: &str,
    exprs: impl IntoIterator<Item = &'e Expr>,
) -> Result<Reads, Whole> {
    let mut walk = Walk::new(resource_type)?;
    let root = Gives::resource();
    for expr in exprs {
        walk.value(expr, &root, &root)?;
    }
    Ok(walk.reads)
}

impl Gives {
    /// The resource itself.
    pub(crate) fn resource() -> Gives {
        Gives::Element(Vec::new())
    }
}

/// The walk over expressions evaluated on one resource type; `reads` grows as it goes.
pub(crate) struct Walk<'v> {
    resource_type: &'v str,
    pub(crate) reads: Reads,
}

impl<'v> Walk<'v> {
    /// A walk that has kept `resourceType` and `id`.
    pub(crate) fn new(resource_type: &'v str) -> Result<Self, Whole> {
        let mut walk = Walk { resource_type, reads: Reads::default() };
        for name in ["resourceType", "id"] {
            walk.whole(&[name.to_owned()])?;
        }
        Ok(walk)
    }

    /// Keeps the element at `path` whole.
    fn whole(&mut self, path: &[String]) -> Result<(), Whole> {
        if path.is_empty() {
            return Err(Whole);
        }
        self.reads.at(path).whole = true;
        Ok(())
    }

    /// Keeps `child` of the element `at` whole.
    fn whole_child(&mut self, at: &[String], child: &str) -> Result<(), Whole> {
        let mut path = at.to_vec();
        path.push(child.to_owned());
        self.whole(&path)
    }

    /// What `gives` stands for is used as a value.
    fn used(&mut self, gives: &Gives) -> Result<(), Whole> {
        match gives {
            Gives::Element(path) => self.whole(path),
            Gives::Other => Ok(()),
        }
    }

    /// An expression whose result is used as a value.
    pub(crate) fn value(&mut self, expr: &Expr, focus: &Gives, this: &Gives) -> Result<(), Whole> {
        let gives = self.expr(expr, focus, this)?;
        self.used(&gives)
    }

    /// Walks `expr` evaluated on `focus` with `$this` being `this`, as the evaluator does.
    pub(crate) fn expr(
        &mut self,
        expr: &Expr,
        focus: &Gives,
        this: &Gives,
    ) -> Result<Gives, Whole> {
        Ok(match expr {
            Expr::Literal(..)
            | Expr::EmptySet
            | Expr::Index
            | Expr::RowIndex
            | Expr::Constant(_) => Gives::Other,
            Expr::This => this.clone(),
            Expr::Resource => Gives::Element(Vec::new()),
            Expr::Member(name) => self.member(focus, name)?,
            Expr::Path(base, name) => {
                let base = self.expr(base, focus, this)?;
                self.member(&base, name)?
            }
            Expr::Call(call) => self.call(focus.clone(), call, this)?,
            Expr::Invoke(base, call) => {
                let base = self.expr(base, focus, this)?;
                self.call(base, call, this)?
            }
            Expr::Indexer(base, index) => {
                let base = self.expr(base, focus, this)?;
                self.value(index, this, this)?;
                base
            }
            Expr::Negate(operand) => {
                self.value(operand, focus, this)?;
                Gives::Other
            }
            Expr::Binary(_, lhs, rhs) => {
                self.value(lhs, focus, this)?;
                self.value(rhs, focus, this)?;
                Gives::Other
            }
            Expr::Is(operand, _) => {
                let operand = self.expr(operand, focus, this)?;
                self.type_test(&operand)?;
                Gives::Other
            }
            Expr::As(operand, _) => {
                let operand = self.expr(operand, focus, this)?;
                self.type_test(&operand)?;
                operand
            }
        })
    }

    /// `name` navigated from `base`.
    fn member(&mut self, base: &Gives, name: &str) -> Result<Gives, Whole> {
        let Gives::Element(path) = base else {
            return Ok(Gives::Other);
        };
        if name.starts_with(|c: char| c.is_ascii_uppercase()) {
            // `Patient.name`: a leading type name stands for the resource itself.
            if path.is_empty()
                && (name == self.resource_type || matches!(name, "Resource" | "DomainResource"))
            {
                return Ok(base.clone());
            }
            // Elsewhere it is the element itself or a child, depending on its resourceType.
            self.whole(path)?;
            return Ok(Gives::Other);
        }
        let mut child = path.clone();
        child.push(name.to_owned());
        self.reads.at(&child);
        Ok(Gives::Element(child))
    }

    /// Type tests on an element read its `resourceType` (choice types come from the member
    /// name, which is kept).
    fn type_test(&mut self, operand: &Gives) -> Result<(), Whole> {
        match operand {
            Gives::Element(path) => self.whole_child(path, "resourceType"),
            Gives::Other => Ok(()),
        }
    }

    /// `call` applied to `input`, with `$this` being `this` around it.
    fn call(&mut self, input: Gives, call: &Call, this: &Gives) -> Result<Gives, Whole> {
        match call {
            // Lambdas: evaluated on each item of the input.
            Call::Exists(Some(criterion)) | Call::All(criterion) | Call::Where(criterion) => {
                self.value(criterion, &input, &input)?
            }
            Call::Select(projection) => return self.expr(projection, &input, &input),
            Call::Iif(criterion, then, otherwise) => {
                self.value(criterion, &input, &input)?;
                // Either branch: what each stands for is kept whole.
                for branch in [Some(then), otherwise.as_ref()].into_iter().flatten() {
                    self.value(branch, &input, &input)?;
                }
                return Ok(Gives::Other);
            }
            // Other arguments: evaluated on the enclosing `$this`.
            _ => {
                if let Some(arg) = call.outer_argument() {
                    self.value(arg, this, this)?;
                }
            }
        }
        let Gives::Element(path) = &input else {
            return Ok(Gives::Other);
        };
        Ok(match call {
            // Existence and repetitions, which are kept with every element.
            Call::Empty | Call::Exists(_) | Call::All(_) | Call::Count | Call::HasValue => {
                Gives::Other
            }
            // Some of the same instances.
            Call::Where(_)
            | Call::First
            | Call::Last
            | Call::Tail
            | Call::Skip(_)
            | Call::Take(_)
            | Call::Single => input,
            Call::OfType(_) | Call::As(_) => {
                self.type_test(&input)?;
                input
            }
            Call::Is(_) => {
                self.type_test(&input)?;
                Gives::Other
            }
            Call::GetResourceKey => {
                self.whole_child(path, "resourceType")?;
                self.whole_child(path, "id")?;
                Gives::Other
            }
            Call::GetReferenceKey(_) => {
                self.whole_child(path, "reference")?;
                Gives::Other
            }
            Call::Resolve => {
                self.whole_child(path, "reference")?;
                self.whole_child(path, "type")?;
                self.whole(&["contained".to_owned()])?;
                Gives::Other
            }
            Call::Extension(_) => {
                let mut extension = path.clone();
                extension.push("extension".to_owned());
                self.whole_child(&extension, "url")?;
                Gives::Element(extension)
            }
            // The rest reads the content (`distinct()` compares it, `join()` joins it, ...).
            _ => {
                self.used(&input)?;
                Gives::Other
            }
        })
    }
}
