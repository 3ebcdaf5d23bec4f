//! The statements of a `.sql` pipeline file, read with `sqlparser`: the
//! streaming DDL DataFusion does not know (`CREATE CONNECTION`, `CREATE
//! TABLE … WITH (connector = …)` with `METADATA FROM`, `CREATE SINK`) by
//! hand on sqlparser's tokens, the queries (`CREATE VIEW … AS`, `INSERT
//! INTO … SELECT`, `CREATE SINK … AS`) by sqlparser itself.

use datafusion_sql::sqlparser::ast::{DataType, Query, Statement};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};
use serde_json::Value as Json;

use crate::SqlError;

/// One statement and the line it starts on.
#[derive(Debug)]
pub struct Located {
    pub line: u64,
    pub stmt: Stmt,
}

#[derive(Debug)]
pub enum Stmt {
    /// `CREATE CONNECTION name FROM|TO mqtt_source|mqtt_sink|mqtt WITH (…)`.
    Connection {
        name: String,
        kind: String,
        options: Vec<Opt>,
    },
    /// `CREATE TABLE name (columns) WITH (connector = …)`.
    Table {
        name: String,
        columns: Vec<Column>,
        watermark: Option<Watermark>,
        options: Vec<Opt>,
    },
    /// `CREATE VIEW name AS query`.
    View { name: String, query: Box<Query> },
    /// `INSERT INTO sink query`.
    Insert { sink: String, query: Box<Query> },
    /// `CREATE SINK name FROM relation | AS query WITH (…)` (RisingWave).
    Sink {
        name: String,
        query: Box<Query>,
        options: Vec<Opt>,
    },
    /// Anything else sqlparser reads (a bare `SELECT`, `DROP`, …): refused
    /// with its name when compiled.
    Other(Box<Statement>),
}

/// A `key = value` of a `WITH (…)` list.
#[derive(Debug, Clone)]
pub struct Opt {
    /// As written: `qos`, `tls.ca`, `raw_bytes.include_topic`.
    pub key: String,
    pub value: Json,
    pub line: u64,
}

/// `WATERMARK FOR column AS expression` in a table's column list.
#[derive(Debug, Clone)]
pub struct Watermark {
    pub column: String,
    /// `ts - INTERVAL '5 seconds'`, or `ts`.
    pub expr: datafusion_sql::sqlparser::ast::Expr,
    pub line: u64,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: DataType,
    pub not_null: bool,
    /// `METADATA FROM 'topic'`: filled from the message, not the payload.
    pub metadata: Option<String>,
    pub line: u64,
}

/// Reads every statement of `text`.
pub fn parse(text: &str) -> Result<Vec<Located>, SqlError> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| SqlError::syntax(0, e))?;
    let mut p = Parser::new(&dialect).with_tokens_with_locations(table_arguments(tokens));
    let mut out = Vec::new();
    loop {
        while p.consume_token(&Token::SemiColon) {}
        let start = p.peek_token();
        if start.token == Token::EOF {
            break;
        }
        let line = start.span.start.line;
        let stmt = statement(&mut p).map_err(|e| SqlError::syntax(line, e))?;
        shallow(&stmt).map_err(|message| SqlError::Syntax { line, message })?;
        out.push(Located { line, stmt });
        let next = p.peek_token();
        if !matches!(next.token, Token::SemiColon | Token::EOF) {
            return Err(SqlError::syntax(
                next.span.start.line,
                ParserError::ParserError(format!(
                    "expected ';' after the statement, found {}",
                    next.token
                )),
            ));
        }
    }
    Ok(out)
}

/// Whether a statement is shallow enough for what walks it next.
fn shallow(stmt: &Stmt) -> Result<(), String> {
    match stmt {
        Stmt::View { query, .. } | Stmt::Insert { query, .. } | Stmt::Sink { query, .. } => {
            crate::depth::of_query(query, &|_: &str| Default::default()).map(|_| ())
        }
        Stmt::Table {
            watermark: Some(w), ..
        } => crate::depth::check_expr(&w.expr),
        Stmt::Other(s) => crate::depth::check_statement(s),
        Stmt::Connection { .. } | Stmt::Table { .. } => Ok(()),
    }
}

/// Flink's window TVFs take their table as `TUMBLE(TABLE t, …)` (or
/// `DATA => TABLE t`), which sqlparser does not read: that `TABLE` is
/// dropped, leaving RisingWave's `TUMBLE(t, …)`. The other tokens keep
/// their lines and columns, for errors.
fn table_arguments(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let at: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let named = |i: usize, names: &[&str]| matches!(&tokens[i].token, Token::Word(w) if names.iter().any(|n| w.value.eq_ignore_ascii_case(n)));
    let mut dropped = Vec::new();
    for k in at.windows(4) {
        let &[function, open, table, next] = k else {
            continue;
        };
        let argument = match tokens[open].token {
            Token::LParen => named(function, crate::window::TVFS),
            Token::RArrow => named(function, &["data"]),
            _ => false,
        };
        // `TABLE (SELECT …)` too, so that it is refused by name.
        if argument
            && matches!(&tokens[table].token, Token::Word(w) if w.keyword == Keyword::TABLE)
            && matches!(tokens[next].token, Token::Word(_) | Token::LParen)
        {
            dropped.push(table);
        }
    }
    tokens
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !dropped.contains(i))
        .map(|(_, t)| t)
        .collect()
}

fn statement(p: &mut Parser) -> Result<Stmt, ParserError> {
    let checkpoint = p.index();
    if p.parse_keyword(Keyword::CREATE) {
        if p.parse_keyword(Keyword::CONNECTION) {
            return connection(p);
        }
        if p.parse_keyword(Keyword::TABLE) {
            let _ = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            return table(p);
        }
        if word(p, "SINK") {
            let _ = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            return sink(p);
        }
        let _ = p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
        let _ = p.parse_keyword(Keyword::MATERIALIZED);
        if p.parse_keyword(Keyword::VIEW) {
            let _ = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let name = name(p)?;
            p.expect_keyword(Keyword::AS)?;
            let query = p.parse_query()?;
            return Ok(Stmt::View { name, query });
        }
    }
    // Not ours: back to the start, for sqlparser.
    while p.index() > checkpoint {
        p.prev_token();
    }
    if p.parse_keywords(&[Keyword::INSERT, Keyword::INTO]) {
        let sink = name(p)?;
        let query = p.parse_query()?;
        return Ok(Stmt::Insert { sink, query });
    }
    Ok(Stmt::Other(Box::new(p.parse_statement()?)))
}

/// The next token is the word `w` (not a keyword of sqlparser's).
fn peek_word(p: &Parser, w: &str) -> bool {
    matches!(&p.peek_token_ref().token, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w))
}

/// Consumes the word `w` if it is next.
fn word(p: &mut Parser, w: &str) -> bool {
    let yes = peek_word(p, w);
    if yes {
        p.next_token();
    }
    yes
}

fn name(p: &mut Parser) -> Result<String, ParserError> {
    Ok(p.parse_object_name(false)?.to_string())
}

fn connection(p: &mut Parser) -> Result<Stmt, ParserError> {
    let name = name(p)?;
    if !(p.parse_keyword(Keyword::FROM) || p.parse_keyword(Keyword::TO)) {
        return p.expected("FROM or TO after the connection's name", p.peek_token());
    }
    let kind = p.parse_identifier()?.value;
    p.expect_keyword(Keyword::WITH)?;
    let options = options(p)?;
    Ok(Stmt::Connection {
        name,
        kind,
        options,
    })
}

fn table(p: &mut Parser) -> Result<Stmt, ParserError> {
    let name = name(p)?;
    let mut columns = Vec::new();
    let mut watermark = None;
    if p.consume_token(&Token::LParen) && !p.consume_token(&Token::RParen) {
        loop {
            if peek_word(p, "WATERMARK") {
                let line = p.next_token().span.start.line;
                if watermark.is_some() {
                    return Err(ParserError::ParserError(
                        "a second WATERMARK FOR: a table has one event time".into(),
                    ));
                }
                p.expect_keyword(Keyword::FOR)?;
                let column = p.parse_identifier()?.value;
                p.expect_keyword(Keyword::AS)?;
                let expr = p.parse_expr()?;
                watermark = Some(Watermark { column, expr, line });
            } else {
                columns.push(column(p)?);
            }
            if p.consume_token(&Token::RParen) {
                break;
            }
            p.expect_token(&Token::Comma)?;
            // A trailing comma.
            if p.consume_token(&Token::RParen) {
                break;
            }
        }
    }
    p.expect_keyword(Keyword::WITH)?;
    let options = options(p)?;
    Ok(Stmt::Table {
        name,
        columns,
        watermark,
        options,
    })
}

fn column(p: &mut Parser) -> Result<Column, ParserError> {
    let line = p.peek_token().span.start.line;
    let name = p.parse_identifier()?.value;
    let ty = p.parse_data_type()?;
    let mut col = Column {
        name,
        ty,
        not_null: false,
        metadata: None,
        line,
    };
    loop {
        if p.parse_keywords(&[Keyword::NOT, Keyword::NULL]) {
            col.not_null = true;
        } else if p.parse_keyword(Keyword::NULL) {
        } else if p.parse_keyword(Keyword::METADATA) {
            p.expect_keyword(Keyword::FROM)?;
            col.metadata = Some(p.parse_literal_string()?);
        } else if p.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
            return p.expected(
                "NOT NULL or METADATA FROM (a key goes in the sink's primary_key option)",
                p.peek_token(),
            );
        } else {
            break;
        }
    }
    Ok(col)
}

fn sink(p: &mut Parser) -> Result<Stmt, ParserError> {
    let name = name(p)?;
    let query = if p.parse_keyword(Keyword::FROM) {
        let from = name_of(p)?;
        // `FROM relation` is `AS SELECT * FROM relation`.
        let dialect = GenericDialect {};
        let mut q = Parser::new(&dialect).try_with_sql(&format!("SELECT * FROM {from}"))?;
        q.parse_query()?
    } else {
        p.expect_keyword(Keyword::AS)?;
        query_before_options(p)?
    };
    p.expect_keyword(Keyword::WITH)?;
    let options = options(p)?;
    Ok(Stmt::Sink {
        name,
        query,
        options,
    })
}

/// The query of `CREATE SINK … AS query WITH (…)`: the tokens up to the
/// statement's last `WITH (` outside parentheses. (Parsed in place,
/// `GROUP BY x WITH (` would be read as MySQL's `WITH ROLLUP`.)
fn query_before_options(p: &mut Parser) -> Result<Box<Query>, ParserError> {
    let mut depth = 0usize;
    let mut end = None;
    for n in 0.. {
        match p.peek_nth_token(n).token {
            Token::SemiColon | Token::EOF => break,
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w)
                if w.keyword == Keyword::WITH
                    && depth == 0
                    && p.peek_nth_token(n + 1).token == Token::LParen =>
            {
                end = Some(n)
            }
            _ => {}
        }
    }
    let Some(end) = end else {
        return p.expected("WITH (…) after the sink's query", p.peek_token());
    };
    let mut tokens: Vec<TokenWithSpan> = (0..end).map(|_| p.next_token()).collect();
    tokens.push(TokenWithSpan::wrap(Token::EOF));
    let dialect = GenericDialect {};
    let mut q = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let query = q.parse_query()?;
    q.expect_token(&Token::EOF)?;
    Ok(query)
}

fn name_of(p: &mut Parser) -> Result<String, ParserError> {
    Ok(p.parse_object_name(false)?.to_string())
}

/// `( key = value, … )`: keys are names (`qos`, `tls.ca`) or quoted
/// (`'raw_bytes.include_topic'`); values are strings, numbers, booleans.
fn options(p: &mut Parser) -> Result<Vec<Opt>, ParserError> {
    p.expect_token(&Token::LParen)?;
    let mut out = Vec::new();
    if p.consume_token(&Token::RParen) {
        return Ok(out);
    }
    loop {
        let t = p.next_token();
        let line = t.span.start.line;
        let mut key = match t.token {
            Token::Word(w) => w.value,
            Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s,
            other => {
                return Err(ParserError::ParserError(format!(
                    "expected an option name, found {other}"
                )))
            }
        };
        while p.consume_token(&Token::Period) {
            match p.next_token().token {
                Token::Word(w) => {
                    key.push('.');
                    key.push_str(&w.value);
                }
                other => {
                    return Err(ParserError::ParserError(format!(
                        "expected a name after {key}., found {other}"
                    )))
                }
            }
        }
        p.expect_token(&Token::Eq)?;
        let negative = p.consume_token(&Token::Minus);
        let value = match p.next_token().token {
            Token::SingleQuotedString(s) if !negative => Json::String(s),
            Token::Number(n, _) => {
                let n = if negative { format!("-{n}") } else { n };
                serde_json::from_str::<Json>(&n)
                    .ok()
                    .filter(Json::is_number)
                    .ok_or_else(|| {
                        ParserError::ParserError(format!("{key}: {n} is not a number"))
                    })?
            }
            Token::Word(w) if !negative && w.quote_style.is_none() => {
                match w.value.to_ascii_lowercase().as_str() {
                    "true" => Json::Bool(true),
                    "false" => Json::Bool(false),
                    _ => Json::String(w.value),
                }
            }
            other => {
                return Err(ParserError::ParserError(format!(
                    "{key}: expected a value ('text', a number, true or false), found {other}"
                )))
            }
        };
        out.push(Opt { key, value, line });
        if p.consume_token(&Token::RParen) {
            break;
        }
        p.expect_token(&Token::Comma)?;
    }
    Ok(out)
}
