//! Row-level-security policies for the synced tables (contract §12), as SQL for an
//! administrator to apply (`synchrod rls`). Every data transaction sets `app.user_id`; the
//! policies compare owner columns with it, directly or through the parent chain.
//!
//! Tables placed by bucket rules (`BUCKET_RULES`), and their descendants, get the condition
//! the engine's scope and the bucket assignment follow ([`Registry::scope_sql`]): a row whose
//! rule column holds a key is readable and writable by the members of that key, other rows
//! fall back to the owner, parent and global rules. The membership check reads the membership
//! table inside the policy; when that table is synced and placed by rules itself, its own
//! policies would refer back to it (PostgreSQL refuses such recursion), so the check goes
//! through a `SECURITY DEFINER` function instead, which must be owned by a role that bypasses
//! row-level security on the membership table.

use crate::registry::{quote_ident, Registry, ScopeSql, SharedRoot, SyncTable};

const USER: &str = "current_setting('app.user_id', true)";

/// The owner condition: the user's own rows and, with `shared`, rows without an owner (NULL
/// or empty, which bucket assignment and the engine's scope treat as global rows).
fn owner_check(alias: Option<&str>, column: &str, shared: bool) -> String {
    let c = match alias {
        Some(a) => format!("{a}.{}", quote_ident(column)),
        None => quote_ident(column),
    };
    if shared {
        format!("({c} IS NULL OR {c}::text = '' OR {c}::text = {USER})")
    } else {
        format!("{c}::text = {USER}")
    }
}

/// The EXISTS chain for a child table, or `None` when no ancestor has the owner column; with
/// `shared`, rows under an ancestor without an owner pass.
fn parent_check(
    registry: &Registry,
    table: &SyncTable,
    owner: &str,
    shared: bool,
    depth: usize,
    child_ref: &str,
) -> Option<String> {
    let link = table.parent.as_ref()?;
    let parent = registry.table(&link.table)?;
    if depth > 16 {
        return None;
    }
    let alias = format!("p{depth}");
    let inner = match parent.column(owner) {
        Some(_) => owner_check(Some(&alias), owner, shared),
        None => parent_check(registry, parent, owner, shared, depth + 1, &alias)?,
    };
    Some(format!(
        "EXISTS (SELECT 1 FROM {} {alias} WHERE {alias}.{} = {child_ref}.{} AND {inner})",
        parent.qualified(),
        quote_ident(&link.parent_column),
        quote_ident(&link.fk_column)
    ))
}

/// True when `table` or one of its ancestors is placed by a bucket rule.
fn chain_has_rules(registry: &Registry, table: &SyncTable) -> bool {
    let mut current = Some(table);
    let mut depth = 0;
    while let Some(t) = current.filter(|_| depth <= 16) {
        if !t.shared.is_empty() {
            return true;
        }
        current = t.parent.as_ref().and_then(|p| registry.table(&p.table));
        depth += 1;
    }
    false
}

/// The `SECURITY DEFINER` membership function of a bucket, when its membership table is a
/// synced table placed by rules (whose policies would otherwise refer back to themselves).
fn definer_function(registry: &Registry, root: &SharedRoot) -> Option<String> {
    let members = registry.tables.iter().find(|t| t.oid == root.members.oid)?;
    chain_has_rules(registry, members).then(|| {
        format!("{}.{}", quote_ident(&root.members.schema), quote_ident(&format!("synchro_member_{}", root.bucket)))
    })
}

/// The statements creating the membership functions [`definer_function`] names.
fn definer_functions(registry: &Registry) -> Vec<String> {
    let mut out = Vec::new();
    let mut done: Vec<String> = Vec::new();
    for t in &registry.tables {
        for root in &t.shared {
            let Some(name) = definer_function(registry, root) else { continue };
            if done.contains(&name) {
                continue;
            }
            done.push(name.clone());
            let key_type = t.column(&root.column).map(|c| c.db_type.as_str()).unwrap_or("text");
            let body = format!(
                "SELECT EXISTS (SELECT 1 FROM {} m WHERE m.{} = key AND m.{}::text = {USER}{})",
                root.members.qualified(),
                quote_ident(&root.members.key),
                quote_ident(&root.members.user),
                root.members.live_filter(),
            );
            // A dollar-quote tag the body cannot contain (names may hold `$`).
            let mut tag = "$synchro$".to_string();
            while body.contains(&tag) {
                tag.insert(tag.len() - 1, '_');
            }
            out.push(format!(
                "-- {name} reads {} as its owner: apply this file as a superuser or a role with BYPASSRLS, \
                 otherwise the membership table's own policies would recurse.",
                root.members.display_name()
            ));
            out.push(format!(
                "CREATE OR REPLACE FUNCTION {name}(key {key_type}) RETURNS boolean LANGUAGE sql STABLE \
                 SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {tag} {body} {tag};"
            ));
        }
    }
    out
}

/// The read and write conditions of a table placed by bucket rules (directly or through an
/// ancestor), over the policy's table `q`.
fn shared_checks(registry: &Registry, table: &SyncTable, q: &str, shared_writable: bool) -> (String, String) {
    let member = |root: &SharedRoot, alias: &str| match definer_function(registry, root) {
        Some(function) => format!("{function}({alias}.{})", quote_ident(&root.column)),
        None => root.member_check(alias, USER),
    };
    let read_owner = |alias: &str, _: &SyncTable, c: &str| owner_check(Some(alias), c, true);
    let write_owner = |alias: &str, _: &SyncTable, c: &str| owner_check(Some(alias), c, shared_writable);
    // Rows without a key, an owner or an owned ancestor are global: everyone reads them, and
    // everyone writes them when shared rows are writable (as tables without ownership).
    let read = ScopeSql { owner: &read_owner, member: &member, unowned: Some("true") };
    let unowned_write = if shared_writable { "true" } else { "false" };
    let write = ScopeSql { owner: &write_owner, member: &member, unowned: Some(unowned_write) };
    (
        registry.scope_sql(table, q, &read).unwrap_or_else(|| "true".into()),
        registry.scope_sql(table, q, &write).unwrap_or_else(|| "false".into()),
    )
}

/// The policy statements for every synced table, in registration order (not idempotent:
/// `CREATE POLICY` fails when the policy exists), preceded by the membership functions that
/// bucket rules on synced membership tables need.
///
/// They grant what synchro's own scope grants (`engine::scope`): a user reads their own rows,
/// shared rows (no owner, an empty owner, no owned ancestor, tables without ownership) and the
/// rows of their teams; they write their own rows and their teams' rows, and shared rows too
/// when `shared_rows_writable` (`SHARED_ROWS_WRITABLE`).
pub fn policies(registry: &Registry, owner_column: &str, shared_rows_writable: bool) -> Vec<String> {
    let mut out = definer_functions(registry);
    let shared_write = || shared_rows_writable.then(|| "true".to_string());
    for t in &registry.tables {
        let q = t.qualified();
        let name = |kind: &str| quote_ident(&format!("sync_{kind}_{}", t.name));
        out.push(format!("ALTER TABLE {q} ENABLE ROW LEVEL SECURITY;"));
        out.push(format!("ALTER TABLE {q} FORCE ROW LEVEL SECURITY;"));
        let (read, write) = if chain_has_rules(registry, t) {
            let (read, write) = shared_checks(registry, t, &q, shared_rows_writable);
            (read, Some(write))
        } else if t.column(owner_column).is_some() {
            (owner_check(None, owner_column, true), Some(owner_check(None, owner_column, shared_rows_writable)))
        } else if t.parent.is_some() {
            match parent_check(registry, t, owner_column, true, 1, &q) {
                Some(read) => (read, parent_check(registry, t, owner_column, shared_rows_writable, 1, &q)),
                // No ancestor has an owner: shared rows, as for a table without ownership.
                None => ("true".to_string(), shared_write()),
            }
        } else {
            ("true".to_string(), shared_write())
        };
        out.push(format!("CREATE POLICY {} ON {q} FOR SELECT USING ({read});", name("read")));
        if let Some(w) = write {
            out.push(format!("CREATE POLICY {} ON {q} FOR INSERT WITH CHECK ({w});", name("write_ins")));
            out.push(format!("CREATE POLICY {} ON {q} FOR UPDATE USING ({w});", name("write_upd")));
            out.push(format!("CREATE POLICY {} ON {q} FOR DELETE USING ({w});", name("write_del")));
        }
    }
    out
}
