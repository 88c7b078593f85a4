//! Parsing Rill's ksqlDB dialect.
//!
//! sqlparser tokenizes (keeping positions) and parses expressions and queries. This module:
//! * upper-cases unquoted identifiers, as ksqlDB does (quoted ones, in backticks, keep case);
//! * parses the statement shapes ksqlDB adds (`CREATE STREAM`, `PRINT`, `TERMINATE`, ...);
//! * lifts the streaming clauses out of a SELECT (`WINDOW`, `WITHIN`, `PARTITION BY`, `EMIT`,
//!   `LIMIT`) so that the rest is standard SQL for sqlparser and DataFusion.

use sqlparser::ast as sp;
use sqlparser::dialect::Dialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};

use crate::ast::*;
use crate::error::{Position, Result, SqlError};
use crate::types::SqlType;

/// ksqlDB's lexical rules: backticks (and double quotes) delimit identifiers.
#[derive(Debug, Default)]
pub struct KsqlDialect;

impl Dialect for KsqlDialect {
    fn is_identifier_start(&self, ch: char) -> bool {
        ch.is_alphabetic() || ch == '_' || ch == '@'
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        ch.is_alphanumeric() || ch == '_' || ch == '@' || ch == '$'
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        ch == '`' || ch == '"'
    }
    /// ksqlDB's identifiers may start with digits (`AS 1R`).
    fn supports_numeric_prefix(&self) -> bool {
        true
    }
    /// ksqlDB's struct dereference `a->b` binds as tightly as a cast (`x->f = y->g` compares
    /// two fields; sqlparser's default puts `->` below `=`).
    fn get_next_precedence(
        &self,
        parser: &sqlparser::parser::Parser,
    ) -> Option<std::result::Result<u8, sqlparser::parser::ParserError>> {
        match parser.peek_token_ref().token {
            Token::Arrow => Some(Ok(self.prec_value(sqlparser::dialect::Precedence::DoubleColon))),
            _ => None,
        }
    }
    /// `x => x + 1` and `(s, x) => s + x`: ksqlDB's lambdas (arguments of TRANSFORM, FILTER and
    /// REDUCE), sqlparser's `Expr::Lambda` for DataFusion's higher-order functions.
    fn parse_prefix(
        &self,
        parser: &mut Parser,
    ) -> Option<std::result::Result<sp::Expr, sqlparser::parser::ParserError>> {
        let names = lambda_parameters(parser)?;
        let params = names
            .into_iter()
            // Quoted, so that DataFusion keeps their case (the body's identifiers keep theirs:
            // identifier normalisation is off, see the engine's session).
            .map(|name| sp::LambdaFunctionParameter { name: sp::Ident::with_quote('"', name), data_type: None })
            .collect::<Vec<_>>();
        let body = match parser.parse_expr() {
            Ok(body) => body,
            Err(e) => return Some(Err(e)),
        };
        let params = match params.len() {
            1 => sp::OneOrManyWithParens::One(params.into_iter().next()?),
            _ => sp::OneOrManyWithParens::Many(params),
        };
        Some(Ok(sp::Expr::Lambda(sp::LambdaFunction { params, body: Box::new(body), syntax: sp::LambdaSyntax::Arrow })))
    }
    /// `=>` introduces lambdas, not named arguments.
    fn supports_named_fn_args_with_rarrow_operator(&self) -> bool {
        false
    }
}

/// The parameter names of a lambda that starts at the parser's position (`x =>` or
/// `(a, b) =>`), consuming them and the arrow; `None` (nothing consumed) otherwise.
fn lambda_parameters(parser: &mut Parser) -> Option<Vec<String>> {
    let word = |t: &Token| match t {
        Token::Word(w) => Some(w.value.clone()),
        _ => None,
    };
    let mut names = Vec::new();
    let mut n = 0;
    if let Some(name) = word(&parser.peek_nth_token_ref(0).token) {
        names.push(name);
        n = 1;
    } else if parser.peek_nth_token_ref(0).token == Token::LParen {
        n = 1;
        loop {
            names.push(word(&parser.peek_nth_token_ref(n).token)?);
            n += 1;
            match parser.peek_nth_token_ref(n).token {
                Token::Comma => n += 1,
                Token::RParen => {
                    n += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if names.is_empty() || parser.peek_nth_token_ref(n).token != Token::RArrow {
        return None;
    }
    for _ in 0..=n {
        parser.next_token();
    }
    Some(names)
}

/// The field name `s->*` is parsed with: every field of the struct `s` (see the planner).
pub const STRUCT_ALL: &str = "__RILL_STRUCT_ALL";

/// Types registered by `CREATE TYPE`, by upper-case name.
pub type CustomTypes = std::collections::BTreeMap<String, SqlType>;

static NO_CUSTOM_TYPES: CustomTypes = CustomTypes::new();

/// How a parser resolves a type name that is not built in.
#[derive(Clone, Copy)]
enum TypeNames<'a> {
    /// As one of these registered types (or not at all).
    Known(&'a CustomTypes),
    /// Later (see [`ParsedStatement::custom_types`]): a request's statements are all checked
    /// for syntax before the first runs, and the first may register a type a later one uses.
    Deferred,
}

/// Parses one or more `;`-separated statements. A type name that is not built in is taken to
/// be a custom type, resolved when the statement runs ([`parse_with_types`] of its text).
pub fn parse(sql: &str) -> Result<Vec<ParsedStatement>> {
    parse_names(sql, TypeNames::Deferred)
}

/// Parses statements whose custom type names (`CREATE TYPE`) resolve through `types`.
pub fn parse_with_types(sql: &str, types: &CustomTypes) -> Result<Vec<ParsedStatement>> {
    parse_names(sql, TypeNames::Known(types))
}

fn parse_names(sql: &str, names: TypeNames) -> Result<Vec<ParsedStatement>> {
    let tokens = Tokenizer::new(&KsqlDialect, sql).tokenize_with_location().map_err(|e| SqlError::Parse {
        position: Position { line: e.location.line, column: e.location.column },
        message: format!("Syntax error: {}", e.message),
    })?;
    let line_starts = line_starts(sql);
    let mut out = Vec::new();
    let mut current: Vec<TokenWithSpan> = Vec::new();
    let mut flush = |current: &mut Vec<TokenWithSpan>, end: Option<&TokenWithSpan>| -> Result<()> {
        if current.is_empty() {
            return Ok(());
        }
        let first = current[0].span.start;
        let start = offset_of(&line_starts, sql, first.line, first.column);
        let stop = match end {
            Some(semi) => offset_of(&line_starts, sql, semi.span.end.line, semi.span.end.column),
            None => sql.len(),
        };
        let text = sql.get(start..stop).unwrap_or(sql).trim().to_string();
        let mut custom_types = complex_casts(current, names)?;
        let mut parser = StatementParser::with_names(std::mem::take(current), names);
        let statement = parser.statement().map_err(|e| match e {
            // ANTLR-style "Expecting {...}" messages name the statement, as ksqlDB's do.
            SqlError::Parse { position, message } if message.starts_with("Expecting ") || message.is_empty() => {
                SqlError::Parse { position, message: format!("{message}\nStatement: {text}") }
            }
            other => other,
        })?;
        custom_types |= parser.deferred;
        out.push(ParsedStatement { statement, text, custom_types });
        Ok(())
    };
    for mut t in tokens {
        match &mut t.token {
            Token::Whitespace(_) => continue,
            Token::SemiColon => {
                flush(&mut current, Some(&t))?;
                continue;
            }
            Token::Word(w) if w.quote_style.is_none() => w.value = w.value.to_uppercase(),
            _ => {}
        }
        current.push(t);
    }
    flush(&mut current, None)?;
    Ok(out)
}

/// Parses a ksqlDB type, as written in a column definition (`MAP<STRING, ARRAY<INT>>`).
pub fn parse_type(text: &str) -> Result<SqlType> {
    let tokens = Tokenizer::new(&KsqlDialect, text).tokenize_with_location().map_err(|e| SqlError::Parse {
        position: Position { line: e.location.line, column: e.location.column },
        message: format!("Syntax error: {}", e.message),
    })?;
    let mut toks: Vec<TokenWithSpan> =
        tokens.into_iter().filter(|t| !matches!(t.token, Token::Whitespace(_))).collect();
    for t in &mut toks {
        if let Token::Word(w) = &mut t.token {
            if w.quote_style.is_none() {
                w.value = w.value.to_uppercase();
            }
        }
    }
    let n = toks.len();
    let mut p = StatementParser::new(toks);
    let t = p.sql_type()?;
    if p.pos < n {
        return p.error(format!("Syntax error at or near '{}': expected the end of the type", p.peek()));
    }
    Ok(t)
}

/// `CAST(x AS ARRAY<..> | MAP<..> | STRUCT<..> | custom type)` becomes `RILL_CAST(x, 'type')`
/// (see [`crate::castfn`]); other casts stay as they are. Returns whether a custom type name
/// was left to resolve later.
fn complex_casts(toks: &mut Vec<TokenWithSpan>, names: TypeNames) -> Result<bool> {
    let mut deferred = false;
    let mut i = 0;
    while i + 1 < toks.len() {
        if !(is_word(&toks[i].token, "CAST") && toks[i + 1].token == Token::LParen) {
            i += 1;
            continue;
        }
        let (mut depth, mut as_at, mut close) = (0usize, None, None);
        for (j, t) in toks.iter().enumerate().skip(i + 1) {
            match &t.token {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(j);
                        break;
                    }
                }
                t if depth == 1 && is_word(t, "AS") => as_at = Some(j),
                _ => {}
            }
        }
        let (Some(a), Some(c)) = (as_at, close) else { break };
        let custom = match (&toks[a + 1].token, names) {
            (Token::Word(w), TypeNames::Known(types)) => types.contains_key(&w.value),
            (Token::Word(w), TypeNames::Deferred) => may_name_custom_type(w),
            _ => false,
        };
        let complex = ["ARRAY", "MAP", "STRUCT"].iter().any(|k| a + 1 < c && is_word(&toks[a + 1].token, k));
        if complex || (custom && a + 2 == c) {
            let mut p = StatementParser::with_names(toks[a + 1..c].to_vec(), names);
            let sql_type = p.sql_type()?;
            deferred |= p.deferred;
            let span = toks[a].span;
            let replacement = [
                TokenWithSpan { token: Token::Comma, span },
                TokenWithSpan { token: Token::SingleQuotedString(sql_type.to_string()), span },
            ];
            toks.splice(a..c, replacement);
            if let Token::Word(w) = &mut toks[i].token {
                w.value = crate::castfn::NAME.to_uppercase();
            }
        }
        i += 1;
    }
    Ok(deferred)
}

/// Whether a word may name a custom type: not a built-in type, not a literal.
fn may_name_custom_type(w: &sqlparser::tokenizer::Word) -> bool {
    w.quote_style.is_some() || !(is_builtin_type(&w.value) || is_literal_word(&w.value))
}

/// Whether `name` (upper case) is a literal's word, which names no type (`CAST(x AS NULL)`).
fn is_literal_word(name: &str) -> bool {
    matches!(name, "NULL" | "TRUE" | "FALSE")
}

/// Whether `name` (upper case) is one of ksqlDB's own type names.
fn is_builtin_type(name: &str) -> bool {
    matches!(
        name,
        "BOOLEAN"
            | "INT"
            | "INTEGER"
            | "BIGINT"
            | "DOUBLE"
            | "STRING"
            | "VARCHAR"
            | "BYTES"
            | "TIMESTAMP"
            | "DATE"
            | "TIME"
            | "DECIMAL"
            | "ARRAY"
            | "MAP"
            | "STRUCT"
    )
}

fn line_starts(sql: &str) -> Vec<usize> {
    let mut v = vec![0];
    for (i, c) in sql.char_indices() {
        if c == '\n' {
            v.push(i + 1);
        }
    }
    v
}

fn offset_of(line_starts: &[usize], sql: &str, line: u64, column: u64) -> usize {
    let Some(start) = line_starts.get(line.saturating_sub(1) as usize) else { return sql.len() };
    sql[*start..].char_indices().nth(column.saturating_sub(1) as usize).map(|(i, _)| start + i).unwrap_or(sql.len())
}

/// Whether a token is an unquoted word equal to `kw` (already upper-cased).
fn is_word(t: &Token, kw: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value == kw)
}

struct StatementParser<'a> {
    toks: Vec<TokenWithSpan>,
    pos: usize,
    names: TypeNames<'a>,
    /// A custom type name was taken on trust ([`TypeNames::Deferred`]).
    deferred: bool,
}

impl<'a> StatementParser<'a> {
    fn new(toks: Vec<TokenWithSpan>) -> Self {
        Self::with_names(toks, TypeNames::Known(&NO_CUSTOM_TYPES))
    }

    fn with_names(toks: Vec<TokenWithSpan>, names: TypeNames<'a>) -> Self {
        Self { toks, pos: 0, names, deferred: false }
    }

    fn peek(&self) -> &Token {
        self.peek_at(0)
    }

    fn peek_at(&self, n: usize) -> &Token {
        self.toks.get(self.pos + n).map(|t| &t.token).unwrap_or(&Token::EOF)
    }

    fn position(&self) -> Position {
        match self.toks.get(self.pos).or_else(|| self.toks.last()) {
            Some(t) => Position { line: t.span.start.line, column: t.span.start.column },
            None => Position { line: 1, column: 1 },
        }
    }

    fn error<T>(&self, msg: impl Into<String>) -> Result<T> {
        Err(SqlError::Parse { position: self.position(), message: msg.into() })
    }

    fn unexpected<T>(&self) -> Result<T> {
        match self.peek() {
            Token::EOF => self.error("Syntax error: unexpected end of statement"),
            t => self.error(format!("Syntax error at or near '{t}'")),
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        is_word(self.peek(), kw)
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_kws(&mut self, kws: &[&str]) -> bool {
        if kws.iter().enumerate().all(|(i, k)| is_word(self.peek_at(i), k)) {
            self.pos += kws.len();
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<()> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            match self.peek() {
                Token::EOF => self.error(format!("Syntax error: expected {kw} but the statement ended")),
                t => self.error(format!("Syntax error at or near '{t}': expected {kw}")),
            }
        }
    }

    fn eat(&mut self, t: &Token) -> bool {
        if self.peek() == t {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Token) -> Result<()> {
        if self.eat(t) {
            Ok(())
        } else {
            match self.peek() {
                Token::EOF => self.error(format!("Syntax error: expected '{t}' but the statement ended")),
                other => self.error(format!("Syntax error at or near '{other}': expected '{t}'")),
            }
        }
    }

    fn ident(&mut self) -> Result<String> {
        match self.peek().clone() {
            Token::Word(w) => {
                self.pos += 1;
                Ok(w.value)
            }
            _ => self.unexpected(),
        }
    }

    fn string(&mut self) -> Result<String> {
        match self.peek().clone() {
            Token::SingleQuotedString(s) => {
                self.pos += 1;
                Ok(s)
            }
            _ => self.unexpected(),
        }
    }

    fn number(&mut self) -> Result<String> {
        match self.peek().clone() {
            Token::Number(n, _) => {
                self.pos += 1;
                Ok(n)
            }
            Token::Minus => {
                self.pos += 1;
                Ok(format!("-{}", self.number()?))
            }
            _ => self.unexpected(),
        }
    }

    fn end(&self) -> Result<()> {
        if self.pos < self.toks.len() {
            self.unexpected()
        } else {
            Ok(())
        }
    }

    fn statement(&mut self) -> Result<Statement> {
        let s = match self.peek() {
            t if is_word(t, "CREATE") => self.create()?,
            t if is_word(t, "INSERT") => self.insert()?,
            t if is_word(t, "SELECT") => Statement::Select(Box::new(self.select()?)),
            t if is_word(t, "SHOW") || is_word(t, "LIST") => self.show()?,
            t if is_word(t, "DESCRIBE") => self.describe()?,
            t if is_word(t, "DROP") => self.drop()?,
            t if is_word(t, "ALTER") => self.alter()?,
            t if is_word(t, "TERMINATE") => {
                self.pos += 1;
                if self.eat_kw("ALL") {
                    Statement::Terminate { id: None }
                } else {
                    Statement::Terminate { id: Some(self.ident()?) }
                }
            }
            t if is_word(t, "PRINT") => self.print()?,
            t if is_word(t, "SET") => {
                self.pos += 1;
                let name = self.string()?;
                self.expect(&Token::Eq)?;
                let value = self.string()?;
                Statement::Set { name, value }
            }
            t if is_word(t, "UNSET") => {
                self.pos += 1;
                Statement::Unset { name: self.string()? }
            }
            t if is_word(t, "EXPLAIN") => {
                self.pos += 1;
                if self.toks.len() == self.pos + 1 {
                    Statement::Explain { target: ExplainTarget::Query(self.ident()?) }
                } else {
                    Statement::Explain { target: ExplainTarget::Statement(Box::new(self.statement()?)) }
                }
            }
            t if is_word(t, "ASSERT") => {
                self.pos += 1;
                if self.is_kw("TOPIC") || self.is_kw("SCHEMA") || self.is_kw("NOT") {
                    return Err(SqlError::Unsupported("ASSERT TOPIC and ASSERT SCHEMA are not supported yet".into()));
                }
                return self.unexpected();
            }
            // The CLI's RUN SCRIPT is no statement of the server's.
            t if is_word(t, "RUN") => return self.error("Unknown statement 'RUN'"),
            _ => return self.unexpected(),
        };
        self.end()?;
        Ok(s)
    }

    fn create(&mut self) -> Result<Statement> {
        self.expect_kw("CREATE")?;
        let or_replace = self.eat_kws(&["OR", "REPLACE"]);
        let read_only = self.eat_kw("SOURCE");
        if !or_replace && !read_only && self.eat_kw("TYPE") {
            let if_not_exists = self.eat_kws(&["IF", "NOT", "EXISTS"]);
            let name = self.ident()?;
            self.expect_kw("AS")?;
            let sql_type = self.sql_type()?;
            return Ok(Statement::CreateType { if_not_exists, name, sql_type });
        }
        if self.is_kw("TYPE") || self.is_kw("CONNECTOR") {
            return Err(SqlError::Unsupported(format!("CREATE {} is not supported yet", self.peek())));
        }
        let kind = self.stream_or_table()?;
        let if_not_exists = self.eat_kws(&["IF", "NOT", "EXISTS"]);
        let name = self.ident()?;
        let mut columns = Vec::new();
        if self.eat(&Token::LParen) {
            loop {
                columns.push(self.column_def()?);
                if !self.eat(&Token::Comma) {
                    break;
                }
            }
            if self.peek() != &Token::RParen {
                return self.error("Expecting {',', ')'}");
            }
            self.expect(&Token::RParen)?;
        }
        let props = if self.eat_kw("WITH") { self.props()? } else { Props::new() };
        let query = if self.eat_kw("AS") { Some(Box::new(self.select()?)) } else { None };
        Ok(Statement::CreateSource { or_replace, kind, read_only, if_not_exists, name, columns, props, query })
    }

    fn column_def(&mut self) -> Result<ColumnDef> {
        let position = self.position();
        let name = self.ident()?;
        let sql_type = self.sql_type()?;
        let mut key = false;
        let mut primary_key = false;
        let mut header = None;
        if self.eat_kws(&["PRIMARY", "KEY"]) {
            key = true;
            primary_key = true;
        } else if self.eat_kw("KEY") {
            key = true;
        } else if self.eat_kw("HEADERS") {
            header = Some(None);
        } else if self.eat_kw("HEADER") {
            self.expect(&Token::LParen)?;
            header = Some(Some(self.string()?));
            self.expect(&Token::RParen)?;
        }
        Ok(ColumnDef { name, sql_type, key, primary_key, header, position })
    }

    /// Parses a type, splitting `>>` tokens of nested generics.
    fn sql_type(&mut self) -> Result<SqlType> {
        let name = match self.peek().clone() {
            Token::Word(w) => {
                self.pos += 1;
                w.value.to_uppercase()
            }
            _ => return self.error(format!("Syntax error at or near '{}': expected a type", self.peek())),
        };
        // ksqlDB's grammar lets any type name take parameters, numbers or STRING
        // (`VARCHAR(STRING)`); only STRING and VARCHAR accept them (and ignore them).
        if matches!(name.as_str(), "STRING" | "VARCHAR") && self.eat(&Token::LParen) {
            loop {
                match self.peek() {
                    Token::Number(..) => self.pos += 1,
                    t if is_word(t, "STRING") => self.pos += 1,
                    _ => return self.error("Expecting {'STRING', INTEGER_VALUE}"),
                }
                if !self.eat(&Token::Comma) {
                    break;
                }
            }
            self.expect(&Token::RParen)?;
            return Ok(SqlType::String);
        }
        if name != "DECIMAL" && self.peek() == &Token::LParen && !matches!(self.peek_at(1), Token::Number(..)) {
            if let Token::Word(w) = self.peek_at(1) {
                if w.value != "STRING" {
                    self.pos += 1;
                    return self.error("Expecting {'STRING', INTEGER_VALUE}");
                }
            }
        }
        Ok(match name.as_str() {
            "BOOLEAN" => SqlType::Boolean,
            "INT" | "INTEGER" => SqlType::Int,
            "BIGINT" => SqlType::Bigint,
            "DOUBLE" => SqlType::Double,
            "STRING" | "VARCHAR" => SqlType::String,
            "BYTES" => SqlType::Bytes,
            "TIMESTAMP" => SqlType::Timestamp,
            "DATE" => SqlType::Date,
            "TIME" => SqlType::Time,
            "DECIMAL" => {
                self.expect(&Token::LParen)?;
                let p: u8 = self.number()?.parse().map_err(|_| SqlError::plan("DECIMAL precision must be a number"))?;
                self.expect(&Token::Comma)?;
                let s: i8 = self.number()?.parse().map_err(|_| SqlError::plan("DECIMAL scale must be a number"))?;
                self.expect(&Token::RParen)?;
                if p == 0 || p > 38 || s < 0 || s as u8 > p {
                    return Err(SqlError::plan(format!("DECIMAL({p}, {s}) is not a valid decimal type")));
                }
                SqlType::Decimal(p, s)
            }
            "ARRAY" => {
                self.expect(&Token::Lt)?;
                let t = self.sql_type()?;
                self.close_angle()?;
                SqlType::Array(Box::new(t))
            }
            "MAP" => {
                self.expect(&Token::Lt)?;
                let k = self.sql_type()?;
                self.expect(&Token::Comma)?;
                let v = self.sql_type()?;
                self.close_angle()?;
                SqlType::Map(Box::new(k), Box::new(v))
            }
            "STRUCT" => {
                self.expect(&Token::Lt)?;
                let mut fields = Vec::new();
                if !self.try_close_angle() {
                    loop {
                        let n = self.ident()?;
                        let t = self.sql_type()?;
                        fields.push((n, t));
                        if !self.eat(&Token::Comma) {
                            break;
                        }
                    }
                    self.close_angle()?;
                }
                SqlType::Struct(fields)
            }
            other => match self.names {
                TypeNames::Known(types) if types.contains_key(other) => types[other].clone(),
                TypeNames::Deferred if !is_literal_word(other) => {
                    self.deferred = true;
                    SqlType::String
                }
                _ => {
                    self.pos -= 1;
                    return self.error(format!("Unknown type: {other}"));
                }
            },
        })
    }

    fn try_close_angle(&mut self) -> bool {
        match self.peek() {
            Token::Gt => {
                self.pos += 1;
                true
            }
            Token::ShiftRight => {
                // `>>` closes two levels: replace it by one `>`.
                let span = self.toks[self.pos].span;
                self.toks[self.pos] = TokenWithSpan { token: Token::Gt, span };
                true
            }
            _ => false,
        }
    }

    fn close_angle(&mut self) -> Result<()> {
        if self.try_close_angle() {
            Ok(())
        } else {
            self.error(format!("Syntax error at or near '{}': expected '>'", self.peek()))
        }
    }

    fn props(&mut self) -> Result<Props> {
        self.expect(&Token::LParen)?;
        let mut props = Props::new();
        loop {
            let name = self.ident()?.to_uppercase();
            self.expect(&Token::Eq)?;
            let value = match self.peek().clone() {
                Token::SingleQuotedString(s) => {
                    self.pos += 1;
                    PropValue::String(s)
                }
                Token::Number(_, _) | Token::Minus => PropValue::Number(self.number()?),
                Token::Word(w) if w.value == "TRUE" || w.value == "FALSE" => {
                    self.pos += 1;
                    PropValue::Bool(w.value == "TRUE")
                }
                _ => return self.unexpected(),
            };
            props.insert(name, value);
            if !self.eat(&Token::Comma) {
                break;
            }
        }
        self.expect(&Token::RParen)?;
        Ok(props)
    }

    fn insert(&mut self) -> Result<Statement> {
        self.expect_kw("INSERT")?;
        self.expect_kw("INTO")?;
        let target_at =
            self.toks.get(self.pos).map(|t| Position::of(t.span.start)).unwrap_or(Position { line: 0, column: 0 });
        let target = self.ident()?;
        if self.eat_kw("WITH") {
            let _ = self.props()?;
        }
        if self.is_kw("SELECT") {
            return Ok(Statement::InsertSelect { target, target_at, query: Box::new(self.select()?) });
        }
        let mut columns = None;
        if self.eat(&Token::LParen) {
            let mut cols = Vec::new();
            loop {
                cols.push(self.ident()?);
                if !self.eat(&Token::Comma) {
                    break;
                }
            }
            self.expect(&Token::RParen)?;
            columns = Some(cols);
        }
        self.expect_kw("VALUES")?;
        let rest = self.toks[self.pos..].to_vec();
        let mut p = Parser::new(&KsqlDialect).with_tokens_with_locations(rest);
        let values = (|| -> std::result::Result<Vec<sp::Expr>, sqlparser::parser::ParserError> {
            p.expect_token(&Token::LParen)?;
            let v = p.parse_comma_separated(Parser::parse_expr)?;
            p.expect_token(&Token::RParen)?;
            Ok(v)
        })()
        .map_err(|e| parser_error(e, self.position()))?;
        self.pos += p.index();
        Ok(Statement::InsertValues { target, columns, values })
    }

    fn show(&mut self) -> Result<Statement> {
        self.pos += 1;
        let what = match self.ident()?.as_str() {
            "STREAMS" => ShowWhat::Streams,
            "TABLES" => ShowWhat::Tables,
            "TOPICS" => ShowWhat::Topics,
            "QUERIES" => ShowWhat::Queries,
            "PROPERTIES" => ShowWhat::Properties,
            "TYPES" => ShowWhat::Types,
            "ALL" if self.eat_kw("TOPICS") => ShowWhat::Topics,
            other => {
                self.pos -= 1;
                return self.error(format!(
                    "Syntax error at or near '{other}': expected STREAMS, TABLES, TOPICS, QUERIES, PROPERTIES or TYPES"
                ));
            }
        };
        let extended = self.eat_kw("EXTENDED");
        Ok(Statement::Show { what, extended })
    }

    fn describe(&mut self) -> Result<Statement> {
        self.expect_kw("DESCRIBE")?;
        if self.eat_kw("STREAMS") {
            return Ok(Statement::DescribeAll { kind: SourceKind::Stream, extended: self.eat_kw("EXTENDED") });
        }
        if self.eat_kw("TABLES") {
            return Ok(Statement::DescribeAll { kind: SourceKind::Table, extended: self.eat_kw("EXTENDED") });
        }
        if self.eat_kw("FUNCTION") {
            return Err(SqlError::Unsupported("DESCRIBE FUNCTION is not supported yet".into()));
        }
        // `DESCRIBE EXTENDED name` (older ksqlDB) and `DESCRIBE name EXTENDED` (newer).
        let extended = self.eat_kw("EXTENDED");
        let name = self.ident()?;
        let extended = extended | self.eat_kw("EXTENDED");
        Ok(Statement::Describe { name, extended })
    }

    /// `STREAM` or `TABLE`.
    fn stream_or_table(&mut self) -> Result<SourceKind> {
        if self.eat_kw("STREAM") {
            Ok(SourceKind::Stream)
        } else if self.eat_kw("TABLE") {
            Ok(SourceKind::Table)
        } else {
            self.error(format!("Syntax error at or near '{}': expected STREAM or TABLE", self.peek()))
        }
    }

    fn drop(&mut self) -> Result<Statement> {
        self.expect_kw("DROP")?;
        if self.eat_kw("TYPE") {
            let if_exists = self.eat_kws(&["IF", "EXISTS"]);
            return Ok(Statement::DropType { if_exists, name: self.ident()? });
        }
        let kind = self.stream_or_table()?;
        let if_exists = self.eat_kws(&["IF", "EXISTS"]);
        let name = self.ident()?;
        let delete_topic = self.eat_kws(&["DELETE", "TOPIC"]);
        Ok(Statement::Drop { kind, if_exists, name, delete_topic })
    }

    fn alter(&mut self) -> Result<Statement> {
        self.expect_kw("ALTER")?;
        let kind = self.stream_or_table()?;
        let name = self.ident()?;
        let mut columns = Vec::new();
        loop {
            self.expect_kw("ADD")?;
            self.eat_kw("COLUMN");
            let column = self.ident()?;
            columns.push((column, self.sql_type()?));
            if !self.eat(&Token::Comma) {
                break;
            }
        }
        Ok(Statement::Alter { kind, name, columns })
    }

    fn print(&mut self) -> Result<Statement> {
        self.expect_kw("PRINT")?;
        let topic = match self.peek().clone() {
            Token::SingleQuotedString(s) => {
                self.pos += 1;
                s
            }
            Token::Word(w) => {
                self.pos += 1;
                if w.quote_style.is_some() {
                    w.value
                } else {
                    w.value.to_lowercase()
                }
            }
            _ => return self.unexpected(),
        };
        let from_beginning = self.eat_kws(&["FROM", "BEGINNING"]);
        let mut limit = None;
        loop {
            if self.eat_kw("INTERVAL") || self.eat_kw("SAMPLE") {
                self.number()?;
            } else if self.eat_kw("LIMIT") {
                limit = Some(self.number()?.parse().map_err(|_| SqlError::plan("LIMIT must be a number"))?);
            } else {
                break;
            }
        }
        Ok(Statement::Print { topic, from_beginning, limit })
    }

    fn duration(&mut self) -> Result<Duration> {
        let n: i64 = self.number()?.parse().map_err(|_| SqlError::plan("a duration must be a whole number"))?;
        let unit = self.ident()?;
        let ms = match unit.trim_end_matches('S') {
            "MILLISECOND" => 1,
            "SECOND" => 1_000,
            "MINUTE" => 60_000,
            "HOUR" => 3_600_000,
            "DAY" => 86_400_000,
            _ => {
                self.pos -= 1;
                return self.error(format!("Syntax error at or near '{unit}': expected a time unit"));
            }
        };
        Ok(Duration { millis: n * ms })
    }

    fn window(&mut self) -> Result<WindowSpec> {
        // ksqlDB's grammar lets a window be named (`WINDOW w TUMBLING (...)`): the name is unused.
        let kinds = ["TUMBLING", "HOPPING", "SESSION"];
        if !kinds.iter().any(|k| is_word(self.peek(), k)) && kinds.iter().any(|k| is_word(self.peek_at(1), k)) {
            self.pos += 1;
        }
        let kind = self.ident()?;
        self.expect(&Token::LParen)?;
        let mut size = None;
        let mut advance = None;
        let mut gap = None;
        let mut retention = None;
        let mut grace = None;
        loop {
            if self.eat_kw("SIZE") {
                size = Some(self.duration()?);
            } else if self.eat_kws(&["ADVANCE", "BY"]) {
                advance = Some(self.duration()?);
            } else if self.eat_kw("RETENTION") {
                retention = Some(self.duration()?);
            } else if self.eat_kws(&["GRACE", "PERIOD"]) {
                grace = Some(self.duration()?);
            } else if kind == "SESSION" && gap.is_none() {
                gap = Some(self.duration()?);
            } else {
                return self.unexpected();
            }
            if !self.eat(&Token::Comma) {
                break;
            }
        }
        self.expect(&Token::RParen)?;
        let missing = |what: &str| SqlError::plan(format!("{kind} windows need {what}"));
        Ok(match kind.as_str() {
            "TUMBLING" => WindowSpec::Tumbling { size: size.ok_or_else(|| missing("a SIZE"))?, retention, grace },
            "HOPPING" => WindowSpec::Hopping {
                size: size.ok_or_else(|| missing("a SIZE"))?,
                advance: advance.ok_or_else(|| missing("ADVANCE BY"))?,
                retention,
                grace,
            },
            "SESSION" => WindowSpec::Session { gap: gap.ok_or_else(|| missing("a gap"))?, retention, grace },
            _ => return self.error(format!("Unknown window type: {kind}")),
        })
    }

    /// Parses `SELECT ...` to the end of the statement, lifting out the ksqlDB clauses.
    fn select(&mut self) -> Result<Select> {
        let mut window = None;
        let mut within = Vec::new();
        let mut partition_by = Vec::new();
        let mut emit = None;
        let mut limit = None;
        let mut rest: Vec<TokenWithSpan> = Vec::new();
        let mut depth = 0i32;
        while self.pos < self.toks.len() {
            let t = self.peek().clone();
            match &t {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                if is_word(&t, "WINDOW") && matches!(self.peek_at(1), Token::Word(_)) {
                    self.pos += 1;
                    window = Some(self.window()?);
                    continue;
                }
                if is_word(&t, "WITHIN") {
                    self.pos += 1;
                    let (before, after) = if self.eat(&Token::LParen) {
                        let b = self.duration()?;
                        self.expect(&Token::Comma)?;
                        let a = self.duration()?;
                        self.expect(&Token::RParen)?;
                        (b, a)
                    } else {
                        let d = self.duration()?;
                        (d, d)
                    };
                    let grace = if self.eat_kws(&["GRACE", "PERIOD"]) { Some(self.duration()?) } else { None };
                    match within.last_mut() {
                        Some(w @ None) => *w = Some(Within { before, after, grace }),
                        _ => return self.error("WITHIN belongs after the source of a JOIN"),
                    }
                    continue;
                }
                if is_word(&t, "JOIN") {
                    within.push(None);
                }
                if is_word(&t, "EMIT") {
                    self.pos += 1;
                    emit = Some(if self.eat_kw("CHANGES") {
                        Emit::Changes
                    } else if self.eat_kw("FINAL") {
                        Emit::Final
                    } else {
                        return self
                            .error(format!("Syntax error at or near '{}': expected CHANGES or FINAL", self.peek()));
                    });
                    continue;
                }
                if is_word(&t, "LIMIT") {
                    self.pos += 1;
                    let n = self.number()?;
                    limit = Some(n.parse().map_err(|_| {
                        SqlError::plan(if n.starts_with('-') && emit.is_none() {
                            "Pull queries don't support negative integers in the LIMIT clause. See https://cnfl.io/queries for more info."
                        } else if n.starts_with('-') {
                            "LIMIT must not be negative"
                        } else {
                            "Failed to prepare statement: Value must be integer for command: LIMIT"
                        })
                    })?);
                    continue;
                }
                if is_word(&t, "PARTITION") && is_word(self.peek_at(1), "BY") {
                    self.pos += 2;
                    let start = self.pos;
                    let mut d = 0;
                    while self.pos < self.toks.len() {
                        match self.peek() {
                            Token::LParen => d += 1,
                            Token::RParen => d -= 1,
                            t if d == 0 && (is_word(t, "EMIT") || is_word(t, "LIMIT")) => break,
                            _ => {}
                        }
                        self.pos += 1;
                    }
                    let toks = self.toks[start..self.pos].to_vec();
                    let written: Vec<&Token> =
                        toks.iter().map(|t| &t.token).filter(|t| !matches!(t, Token::Whitespace(_))).collect();
                    if matches!(written.as_slice(), [Token::LParen, Token::RParen]) {
                        return Err(SqlError::plan("PARTITION BY requires at least one expression"));
                    }
                    let pos = self.position();
                    let mut p = Parser::new(&KsqlDialect).with_tokens_with_locations(toks);
                    partition_by = p.parse_comma_separated(Parser::parse_expr).map_err(|e| parser_error(e, pos))?;
                    // ksqlDB's grammar takes value expressions here, not conditions.
                    if partition_by.iter().any(is_condition) {
                        return Err(SqlError::Parse {
                            position: pos,
                            message: "Syntax error: PARTITION BY takes value expressions, not a condition".into(),
                        });
                    }
                    continue;
                }
            }
            let mut t = self.toks[self.pos].clone();
            // NULL is no type (`CAST(x AS NULL)`) nor a name.
            let previous = rest.iter().rev().find(|p| !matches!(p.token, Token::Whitespace(_)));
            if is_word(&t.token, "NULL") && previous.is_some_and(|p| is_word(&p.token, "AS")) {
                return Err(SqlError::Parse {
                    position: Position::of(t.span.start),
                    message: "Syntax error at or near 'NULL'".into(),
                });
            }
            // ksqlDB's `s->*` (every field of a struct) is not SQL: the planner expands it.
            if t.token == Token::Mul && rest.last().is_some_and(|p| p.token == Token::Arrow) {
                t.token = Token::make_word(STRUCT_ALL, None);
            }
            rest.push(t);
            self.pos += 1;
        }
        // sqlparser gives no location at the end of input: point after the last token.
        let pos =
            rest.last().map(|t| Position { line: t.span.end.line, column: t.span.end.column }).unwrap_or_default();
        let n = rest.len();
        let mut p = Parser::new(&KsqlDialect).with_tokens_with_locations(rest.clone());
        let query = p.parse_query().map_err(|e| parser_error(e, pos))?;
        if p.index() < n {
            let t = p.peek_token();
            return Err(SqlError::Parse {
                position: Position { line: t.span.start.line, column: t.span.start.column },
                message: format!("Syntax error at or near '{}'", t.token),
            });
        }
        // ksqlDB's grammar has no ORDER BY: it fails at the BY (ORDER reads as an alias).
        if query.order_by.is_some() {
            let by = rest.windows(2).find(|w| is_word(&w[0].token, "ORDER") && is_word(&w[1].token, "BY"));
            return Err(SqlError::Parse {
                position: by.map(|w| Position::of(w[1].span.start)).unwrap_or(pos),
                message: String::new(),
            });
        }
        group_by_values(&query, &rest)?;
        Ok(Select { query: *query, window, within, partition_by, emit, limit })
    }
}

/// ksqlDB's grammar groups by value expressions, or by one parenthesised list of them:
/// `GROUP BY a, (b, c)` fails at the comma in the parentheses ("missing ')'"), and a condition
/// (`GROUP BY a AND b`) at its operator.
fn group_by_values(query: &sp::Query, toks: &[TokenWithSpan]) -> Result<()> {
    use sqlparser::ast::Spanned;
    let sp::SetExpr::Select(select) = query.body.as_ref() else { return Ok(()) };
    let sp::GroupByExpr::Expressions(exprs, _) = &select.group_by else { return Ok(()) };
    // The first token of `kind` at or after `from`.
    let token_after = |from: sqlparser::tokenizer::Location, kind: &dyn Fn(&Token) -> bool| {
        toks.iter()
            .find(|t| (t.span.start.line, t.span.start.column) >= (from.line, from.column) && kind(&t.token))
            .map(|t| Position::of(t.span.start))
            .unwrap_or(Position::of(from))
    };
    for e in exprs {
        // `GROUP BY (a, b)` alone is one grouping of several expressions.
        if let (sp::Expr::Tuple(items), true) = (e, exprs.len() > 1) {
            let first = items.first().map_or(e.span().start, |i| i.span().end);
            let position = token_after(first, &|t| *t == Token::Comma);
            return Err(SqlError::Parse { position, message: "missing ')' at ','".into() });
        }
        if is_condition(e) {
            let at = match e {
                sp::Expr::BinaryOp { left, .. } => left.span().end,
                _ => e.span().start,
            };
            let position = token_after(at, &|t| !matches!(t, Token::Whitespace(_)));
            return Err(SqlError::Parse {
                position,
                message: "Syntax error: GROUP BY takes value expressions, not a condition".into(),
            });
        }
    }
    Ok(())
}

/// A boolean condition (`AND`, `OR`, `NOT`, a comparison, `IS NULL`, `LIKE`, `IN`, `BETWEEN`):
/// ksqlDB's grammar allows it where a boolean is expected, not as a value (`PARTITION BY`),
/// unless in parentheses.
fn is_condition(e: &sp::Expr) -> bool {
    use sp::BinaryOperator as B;
    match e {
        sp::Expr::BinaryOp { op, .. } => {
            matches!(op, B::And | B::Or | B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq)
        }
        sp::Expr::UnaryOp { op: sp::UnaryOperator::Not, .. } => true,
        sp::Expr::IsNull(_)
        | sp::Expr::IsNotNull(_)
        | sp::Expr::Like { .. }
        | sp::Expr::InList { .. }
        | sp::Expr::Between { .. } => true,
        // `(a AND b)` is a primary expression in ksqlDB's grammar, so a value.
        _ => false,
    }
}

/// Turns a sqlparser error (which embeds "at Line: l, Column: c") into a positioned error.
fn parser_error(e: sqlparser::parser::ParserError, fallback: Position) -> SqlError {
    let msg = e.to_string();
    let msg = msg.strip_prefix("sql parser error: ").unwrap_or(&msg).to_string();
    let mut position = fallback;
    if let Some(i) = msg.find(" at Line: ") {
        let tail = &msg[i + " at Line: ".len()..];
        let mut parts = tail.split(", Column: ");
        if let (Some(l), Some(c)) = (parts.next(), parts.next()) {
            if let (Ok(l), Ok(c)) = (l.trim().parse(), c.trim().parse()) {
                position = Position { line: l, column: c };
            }
        }
        return SqlError::Parse { position, message: format!("Syntax error: {}", &msg[..i]) };
    }
    SqlError::Parse { position, message: format!("Syntax error: {msg}") }
}

/// Unused-whitespace helper kept for symmetry with the tokenizer.
#[allow(dead_code)]
fn is_whitespace(t: &Token) -> bool {
    matches!(t, Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        let mut v = parse(sql).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0).statement
    }

    #[test]
    fn lambdas_parse_with_one_or_more_parameters() {
        let Statement::Select(select) =
            one("SELECT REDUCE(m, 0, (s, k, v) => s + v), TRANSFORM(a, x => x * 2) FROM t EMIT CHANGES;")
        else {
            panic!()
        };
        let text = select.query.to_string();
        assert!(text.contains(r#"REDUCE(M, 0, ("S", "K", "V") -> S + V)"#), "{text}");
        assert!(text.contains(r#"TRANSFORM(A, "X" -> X * 2)"#), "{text}");
        let Statement::CreateSource { query: Some(select), .. } =
            one("CREATE STREAM OUTPUT AS SELECT ID, REDUCE(numbers, 2, (s, x) => s + x) AS reduce FROM test;")
        else {
            panic!()
        };
        assert!(select.query.to_string().contains(r#"("S", "X") -> S + X"#));
        parse("CREATE STREAM test (ID STRING KEY, numbers ARRAY<INTEGER>) WITH (kafka_topic='test_topic', value_format='JSON');\nCREATE STREAM OUTPUT AS SELECT ID, REDUCE(numbers, 2, (s, x) => s + x) AS reduce FROM test;").unwrap();
        // A parenthesised expression is not a lambda.
        let Statement::Select(select) = one("SELECT (a + b) * 2 FROM t EMIT CHANGES;") else { panic!() };
        assert!(select.query.to_string().contains("(A + B) * 2"));
    }

    #[test]
    fn create_stream_with_key_and_props() {
        let Statement::CreateSource { kind, name, columns, props, .. } = one(
            "CREATE STREAM pageviews (k STRING KEY, `Id` bigint, m MAP<STRING, ARRAY<INT>>) WITH (kafka_topic='pv', value_format='JSON', partitions=2);",
        ) else {
            panic!()
        };
        assert_eq!(kind, SourceKind::Stream);
        assert_eq!(name, "PAGEVIEWS");
        assert_eq!(columns[0].name, "K");
        assert!(columns[0].key);
        assert_eq!(columns[1].name, "Id");
        assert_eq!(
            columns[2].sql_type,
            SqlType::Map(Box::new(SqlType::String), Box::new(SqlType::Array(Box::new(SqlType::Int))))
        );
        assert_eq!(props["KAFKA_TOPIC"], PropValue::String("pv".into()));
        assert_eq!(props["PARTITIONS"], PropValue::Number("2".into()));
    }

    #[test]
    fn select_lifts_streaming_clauses() {
        let Statement::Select(s) = one(
            "SELECT id, COUNT(*) FROM s WINDOW TUMBLING (SIZE 30 SECONDS, GRACE PERIOD 1 MINUTE) WHERE x > 1 GROUP BY id EMIT CHANGES LIMIT 3;",
        ) else {
            panic!()
        };
        assert_eq!(
            s.window,
            Some(WindowSpec::Tumbling {
                size: Duration { millis: 30_000 },
                retention: None,
                grace: Some(Duration { millis: 60_000 })
            })
        );
        assert_eq!(s.emit, Some(Emit::Changes));
        assert_eq!(s.limit, Some(3));
        assert_eq!(s.query.to_string(), "SELECT ID, COUNT(*) FROM S WHERE X > 1 GROUP BY ID");
    }

    #[test]
    fn struct_dereference_binds_tighter_than_comparison() {
        let Statement::Select(s) = one("SELECT * FROM s WHERE a->b = c->d EMIT CHANGES;") else { panic!() };
        let sp::SetExpr::Select(body) = s.query.body.as_ref() else { panic!() };
        let Some(sp::Expr::BinaryOp { op: sp::BinaryOperator::Eq, left, right }) = &body.selection else {
            panic!("{:?}", body.selection)
        };
        assert!(matches!(left.as_ref(), sp::Expr::BinaryOp { op: sp::BinaryOperator::Arrow, .. }));
        assert!(matches!(right.as_ref(), sp::Expr::BinaryOp { op: sp::BinaryOperator::Arrow, .. }));
    }

    #[test]
    fn struct_all_fields_parse_for_the_planner_to_expand() {
        let Statement::Select(s) = one("SELECT k, s->* FROM t EMIT CHANGES;") else { panic!() };
        assert_eq!(s.query.to_string(), format!("SELECT K, S -> {STRUCT_ALL} FROM T"));
    }

    #[test]
    fn windows_may_be_named_and_limits_must_be_whole() {
        let Statement::Select(s) =
            one("SELECT id, COUNT(*) FROM s WINDOW w SESSION (5 SECONDS) GROUP BY id EMIT CHANGES;")
        else {
            panic!()
        };
        assert!(matches!(s.window, Some(WindowSpec::Session { .. })));
        let e = parse("SELECT * FROM S1 ORDER BY MYKEY DESC;").unwrap_err().to_string();
        assert_eq!(e, "line 1:24: Syntax Error\n\nStatement: SELECT * FROM S1 ORDER BY MYKEY DESC;");
        let e = parse("SELECT * FROM s LIMIT 2.5;").unwrap_err().to_string();
        assert!(e.contains("Value must be integer for command: LIMIT"), "{e}");
        let e = parse("SELECT * FROM s LIMIT -1;").unwrap_err().to_string();
        assert!(e.contains("Pull queries don't support negative integers in the LIMIT clause"), "{e}");
    }

    #[test]
    fn errors_say_where() {
        let e = parse("CREATE STREAM s (a INT) WITH (kafka_topic='t');\nSELEC * FROM s;").unwrap_err();
        assert_eq!(e.to_string(), "line 2:1: Syntax Error\nSyntax error at or near 'SELEC' at line 2:1");
        let e = parse("SELECT * FROM s WHERE;").unwrap_err();
        assert!(e.to_string().starts_with("line 1:22: Syntax Error\n"), "{e}");
    }

    #[test]
    fn type_parameters_follow_ksqldb_grammar() {
        let v = parse("CREATE STREAM I (K VARCHAR(STRING) KEY, V STRING) WITH (kafka_topic='i');").unwrap();
        let Statement::CreateSource { columns, .. } = &v[0].statement else { panic!("not a CREATE") };
        assert_eq!(columns[0].sql_type, SqlType::String);
        assert!(columns[0].key);
        let e = parse("CREATE STREAM I (K INT (KEY)) WITH (kafka_topic='i');").unwrap_err().to_string();
        assert!(
            e.starts_with("line 1:25: Syntax Error\nExpecting {'STRING', INTEGER_VALUE}\nStatement: CREATE"),
            "{e}"
        );
        let e = parse("CREATE STREAM I (K VARCHAR(STRING) (KEY)) WITH (kafka_topic='i');").unwrap_err().to_string();
        assert!(e.contains("line 1:36: Syntax Error\nExpecting {',', ')'}"), "{e}");
    }

    #[test]
    fn custom_type_names_resolve_when_the_statement_runs() {
        let v =
            parse("CREATE TYPE A AS STRUCT<x INT>; CREATE STREAM s (k A) WITH (kafka_topic='s'); SHOW TYPES;").unwrap();
        let Statement::CreateType { name, sql_type, if_not_exists: false } = &v[0].statement else { panic!() };
        assert_eq!((name.as_str(), sql_type), ("A", &SqlType::Struct(vec![("X".into(), SqlType::Int)])));
        assert_eq!(v.iter().map(|p| p.custom_types).collect::<Vec<_>>(), vec![false, true, false]);
        let types: CustomTypes = [("A".to_string(), SqlType::Array(Box::new(SqlType::Int)))].into();
        let again = parse_with_types(&v[1].text, &types).unwrap();
        let Statement::CreateSource { columns, .. } = &again[0].statement else { panic!() };
        assert_eq!(columns[0].sql_type, SqlType::Array(Box::new(SqlType::Int)));
        assert!(!again[0].custom_types);
        let e = parse_with_types(&v[1].text, &CustomTypes::new()).unwrap_err().to_string();
        assert!(e.contains("Unknown type: A"), "{e}");
        // A cast to a custom type is a cast to the type it names.
        let cast = parse_with_types("SELECT CAST(x AS a) FROM s EMIT CHANGES;", &types).unwrap();
        let Statement::Select(q) = &cast[0].statement else { panic!() };
        assert!(q.query.to_string().contains("'ARRAY<INTEGER>'"), "{}", q.query);
        assert!(matches!(one("DROP TYPE IF EXISTS A;"), Statement::DropType { if_exists: true, .. }));
    }

    #[test]
    fn statement_texts_are_split() {
        let v = parse("DESCRIBE foo EXTENDED;").unwrap();
        assert!(matches!(&v[0].statement, Statement::Describe { extended: true, .. }));
        let v = parse("SHOW STREAMS; DESCRIBE EXTENDED foo ;").unwrap();
        assert_eq!(v[0].text, "SHOW STREAMS;");
        assert_eq!(v[1].text, "DESCRIBE EXTENDED foo ;");
    }
}
