//! Row-level-security policies for the synced tables (contract §12), as SQL for an
//! administrator to apply (`synchrod rls`). Every data transaction sets `app.user_id`; the
//! policies compare owner columns with it, directly or through the parent chain.

use crate::registry::{quote_ident, Registry, SyncTable};

const USER: &str = "current_setting('app.user_id', true)";

fn owner_check(alias: Option<&str>, column: &str, nullable: bool) -> String {
    let c = match alias {
        Some(a) => format!("{a}.{}", quote_ident(column)),
        None => quote_ident(column),
    };
    if nullable {
        format!("({c} IS NULL OR {c}::text = {USER})")
    } else {
        format!("{c}::text = {USER}")
    }
}

/// The EXISTS chain for a child table, or `None` when no ancestor has the owner column.
fn parent_check(registry: &Registry, table: &SyncTable, owner: &str, depth: usize, child_ref: &str) -> Option<String> {
    let link = table.parent.as_ref()?;
    let parent = registry.table(&link.table)?;
    if depth > 16 {
        return None;
    }
    let alias = format!("p{depth}");
    let inner = match parent.column(owner) {
        Some(col) => owner_check(Some(&alias), owner, col.nullable),
        None => parent_check(registry, parent, owner, depth + 1, &alias)?,
    };
    Some(format!(
        "EXISTS (SELECT 1 FROM {} {alias} WHERE {alias}.{} = {child_ref}.{} AND {inner})",
        parent.qualified(),
        quote_ident(&link.parent_column),
        quote_ident(&link.fk_column)
    ))
}

/// The policy statements for every synced table, in registration order (not idempotent:
/// `CREATE POLICY` fails when the policy exists).
pub fn policies(registry: &Registry, owner_column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in &registry.tables {
        let q = t.qualified();
        let name = |kind: &str| quote_ident(&format!("sync_{kind}_{}", t.name));
        out.push(format!("ALTER TABLE {q} ENABLE ROW LEVEL SECURITY;"));
        out.push(format!("ALTER TABLE {q} FORCE ROW LEVEL SECURITY;"));
        let (read, write) = if let Some(col) = t.column(owner_column) {
            (owner_check(None, owner_column, col.nullable), Some(owner_check(None, owner_column, false)))
        } else if t.parent.is_some() {
            match parent_check(registry, t, owner_column, 1, &q) {
                Some(e) => (e.clone(), Some(e)),
                // No ancestor has an owner: no policy at all (unreadable under FORCE).
                None => continue,
            }
        } else {
            ("true".to_string(), None)
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
