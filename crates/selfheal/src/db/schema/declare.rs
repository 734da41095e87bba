//! What the application declares it needs: [`Schema`], [`Table`],
//! [`Column`] and [`Index`].
//!
//! Plain values with builders, and the SQL each declaration adds itself
//! with. Nothing here talks to the database: [`drift`](super::drift) compares
//! these with the live schema, [`heal`](super::heal) runs the SQL.

use crate::db::quote_ident;

/// The schema the application needs: tables, and tables that must be gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schema {
    pub(super) tables: Vec<Table>,
    pub(super) absent: Vec<String>,
}

impl Schema {
    /// An empty schema.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a table.
    pub fn table(mut self, table: Table) -> Self {
        self.tables.push(table);
        self
    }

    /// Declares a table that must not exist any more (the app stopped using
    /// it and a migration should have dropped it). Its presence is
    /// reported; it is never dropped.
    pub fn absent_table(mut self, name: impl Into<String>) -> Self {
        self.absent.push(name.into());
        self
    }

    /// The declared tables.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }
}

/// A declared table: its name, the columns and indexes the app needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub(super) name: String,
    pub(super) columns: Vec<Column>,
    pub(super) indexes: Vec<Index>,
}

impl Table {
    /// A table named `name` with no columns declared yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            columns: Vec::new(),
            indexes: Vec::new(),
        }
    }

    /// Declares a column.
    pub fn column(mut self, column: Column) -> Self {
        self.columns.push(column);
        self
    }

    /// Declares an index.
    pub fn index(mut self, index: Index) -> Self {
        self.indexes.push(index);
        self
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A declared column. Defaults: nullability not checked (and nullable when
/// added), no default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub(super) name: String,
    pub(super) ty: String,
    pub(super) not_null: Option<bool>,
    pub(super) default: Option<String>,
}

impl Column {
    /// A column `name` of SQL type `ty` (`"INTEGER"`, `"TEXT"`, `"bigint"`,
    /// `"timestamptz"`…).
    pub fn new(name: impl Into<String>, ty: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ty: ty.into(),
            not_null: None,
            default: None,
        }
    }

    /// The column must be `NOT NULL`.
    pub fn not_null(mut self) -> Self {
        self.not_null = Some(true);
        self
    }

    /// The column must accept `NULL`.
    pub fn nullable(mut self) -> Self {
        self.not_null = Some(false);
        self
    }

    /// The column's default, an SQL expression (`"0"`, `"'free'"`,
    /// `"now()"`): used when the column is added, and its presence checked.
    pub fn default(mut self, expression: impl Into<String>) -> Self {
        self.default = Some(expression.into());
        self
    }

    /// The column's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The column as in `ADD COLUMN`: name, type, `NOT NULL`, default.
    pub(super) fn definition(&self) -> String {
        let mut sql = format!("{} {}", quote_ident(&self.name), self.ty);
        if self.not_null == Some(true) {
            sql.push_str(" NOT NULL");
        }
        if let Some(default) = &self.default {
            sql.push_str(" DEFAULT ");
            sql.push_str(default);
        }
        sql
    }
}

/// A declared index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub(super) name: String,
    pub(super) columns: Vec<String>,
    pub(super) unique: bool,
}

impl Index {
    /// An index `name` on `columns`, in order.
    pub fn new<I, S>(name: impl Into<String>, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            name: name.into(),
            columns: columns.into_iter().map(Into::into).collect(),
            unique: false,
        }
    }

    /// A unique index.
    pub fn unique(mut self) -> Self {
        self.unique = true;
        self
    }

    /// The `CREATE INDEX IF NOT EXISTS` statement for this index on `table`.
    pub(super) fn create_sql(&self, table: &str) -> String {
        let columns: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        format!(
            "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
            if self.unique { "UNIQUE " } else { "" },
            quote_ident(&self.name),
            quote_ident(table),
            columns.join(", ")
        )
    }
}
