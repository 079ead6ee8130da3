//! No import cycle between the library's top-level modules, nor between the
//! submodules of one top-level module directory.
//!
//! Reads src/ (the library: the modules `src/lib.rs` declares, and the crate
//! root itself), and for each top-level module collects the other top-level
//! modules its code names: `crate::x`, the names in a `crate::{x, y::z}` group,
//! and `super::x` paths that climb out of the module to the crate root. A name
//! of the crate root's own (`crate::RunError`) is an edge to the root, which
//! itself depends on every module it declares. Comments (doc links included),
//! string and char literals and test-only code (`#[cfg(test)]`,
//! `#[cfg(all(test, ...))]` items) are left out. The test fails listing every
//! strongly connected component of more than one module, with the lines that
//! make each of its edges.
//!
//! Inline modules other than test ones are not tracked: `super::` in one is
//! read as if it were at file level, so name paths from `crate::` there.
//!
//! The binary's own modules (src/main.rs, src/top.rs, src/cli/) are not the
//! library and are not read.
//!
//! Inside each top-level module directory (src/parse/, src/spool/, ...) the
//! same holds between its submodules: no import cycle among siblings (see
//! [`collect_children`]; the directory's `mod.rs` is not a node).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate root, as a node of the graph.
const ROOT: &str = "(root)";

/// Edges still allowed, `("from", "to")`, each with the reason it stays. Empty
/// is the goal; an entry whose edge no longer exists fails the test.
const ALLOWED: &[(&str, &str)] = &[];

/// Replace comments, string and char literals by spaces (keeping line breaks,
/// so that line numbers stay right).
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend(bytes.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }));
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            let end = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
            blank(&mut out, &b[i..end]);
            i = end;
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (1, i + 2);
            while j < b.len() && depth > 0 {
                if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                    depth += 1;
                    j += 2;
                } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &b[i..j]);
            i = j;
        } else if (c == b'r' || c == b'b')
            && !prev_is_ident(b, i)
            && raw_string_start(&b[i..]).is_some()
        {
            let (skip, hashes) = raw_string_start(&b[i..]).unwrap();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let body = i + skip;
            let end = b[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |p| body + p + close.len());
            blank(&mut out, &b[i..end]);
            i = end;
        } else if c == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            blank(&mut out, &b[i..end]);
            i = end;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}', '"'), or a lifetime ('a).
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map(|p| i + 2 + p + 1)
            } else {
                // One UTF-8 character, then a quote.
                let len = std::str::from_utf8(&b[i + 1..(i + 5).min(b.len())])
                    .ok()
                    .or_else(|| {
                        (2..5)
                            .rev()
                            .find_map(|n| std::str::from_utf8(&b[i + 1..(i + n).min(b.len())]).ok())
                    })
                    .and_then(|s| s.chars().next())
                    .map_or(1, char::len_utf8);
                (b.get(i + 1 + len) == Some(&b'\'')).then_some(i + 1 + len + 1)
            };
            match end {
                Some(end) => {
                    blank(&mut out, &b[i..end]);
                    i = end;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII was replaced")
}

fn prev_is_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// `r"`, `r#"`, `br##"`: the length of the opening and the number of `#`.
fn raw_string_start(b: &[u8]) -> Option<(usize, usize)> {
    let mut j = 0;
    if b.first() == Some(&b'b') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    j += hashes;
    (b.get(j) == Some(&b'"')).then_some((j + 1, hashes))
}

/// Blank the items under a test-only `cfg` attribute (a `mod tests { ... }`,
/// a `use`, a `fn`): from the attribute to the item's `;` or closing brace.
fn strip_test_items(code: &str) -> String {
    let mut b = code.as_bytes().to_vec();
    let mut from = 0;
    loop {
        let text = std::str::from_utf8(&b).expect("ASCII blanks");
        let at = ["#[cfg(test)]", "#[cfg(all(test,", "#[cfg(all(test ,"]
            .iter()
            .filter_map(|p| text[from..].find(p).map(|at| from + at))
            .min();
        let Some(at) = at else { break };
        // Past the attribute's closing bracket.
        let mut j = at + 1;
        let mut depth = 0;
        while j < b.len() {
            match b[j] {
                b'[' => depth += 1,
                b']' => {
                    depth -= 1;
                    if depth == 0 {
                        j += 1;
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        // The item: to a `;` outside braces, or to the brace that closes it.
        let mut depth = 0;
        while j < b.len() {
            match b[j] {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        j += 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    j += 1;
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        for c in &mut b[at..j] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = j;
    }
    String::from_utf8(b).expect("ASCII blanks")
}

fn ident_at(b: &[u8], i: usize) -> &str {
    let end = b[i..]
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
        .map_or(b.len(), |p| i + p);
    std::str::from_utf8(&b[i..end]).expect("ASCII identifier")
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The first names of each path in a `{ ... }` group that starts at `b[i]`.
fn group_heads(b: &[u8], i: usize) -> Vec<(usize, String)> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'{' => {
                depth += 1;
                expect_head = depth == 1;
                j += 1;
            }
            b'}' => {
                depth -= 1;
                j += 1;
                if depth == 0 {
                    break;
                }
            }
            b',' => {
                expect_head = depth == 1;
                j += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let name = ident_at(b, j);
                if expect_head {
                    heads.push((j, name.to_string()));
                    expect_head = false;
                }
                j += name.len();
            }
            _ => j += 1,
        }
    }
    heads
}

/// The module path of a file under src/: src/a.rs and src/a/mod.rs are
/// `[a]`, src/a/b.rs is `[a, b]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Where the top-level module of `path` names `target`: `(file, line)`.
type Uses = BTreeMap<(String, String), Vec<String>>;

fn collect(src: &Path, modules: &BTreeSet<String>) -> Uses {
    let mut uses = Uses::new();
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files.sort();
    for file in files {
        let rel = file.strip_prefix(src).unwrap().to_path_buf();
        let path = module_path(&rel);
        let from = match path.first() {
            None => ROOT.to_string(),
            Some(top) if modules.contains(top) => top.clone(),
            // The binary's modules (main.rs, top.rs, cli/).
            Some(_) => continue,
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let code = strip_test_items(&strip(&text));
        let b = code.as_bytes();
        let line_of = |at: usize| code[..at].matches('\n').count() + 1;
        let add = |uses: &mut Uses, to: &str, at: usize| {
            let to = if modules.contains(to) { to } else { ROOT };
            if to != from {
                uses.entry((from.clone(), to.to_string()))
                    .or_default()
                    .push(format!("src/{}:{}", rel.display(), line_of(at)));
            }
        };
        let mut i = 0;
        while let Some(p) = code[i..].find("crate").map(|p| i + p) {
            i = p + "crate".len();
            if p > 0 && (b[p - 1].is_ascii_alphanumeric() || b[p - 1] == b'_') {
                continue;
            }
            let j = skip_ws(b, i);
            if !code[j..].starts_with("::") {
                continue;
            }
            let k = skip_ws(b, j + 2);
            if b.get(k) == Some(&b'{') {
                for (at, head) in group_heads(b, k) {
                    if head != "self" {
                        add(&mut uses, &head, at);
                    }
                }
            } else if b
                .get(k)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
            {
                add(&mut uses, ident_at(b, k), k);
            }
        }
        // `super::` climbing out of the top-level module to the root.
        let mut i = 0;
        while let Some(p) = code[i..].find("super").map(|p| i + p) {
            i = p + "super".len();
            if p > 0 && (b[p - 1].is_ascii_alphanumeric() || b[p - 1] == b'_' || b[p - 1] == b':') {
                continue;
            }
            let mut k = p;
            let mut climbs = 0;
            loop {
                if !code[k..].starts_with("super") {
                    break;
                }
                let j = skip_ws(b, k + "super".len());
                if !code[j..].starts_with("::") {
                    break;
                }
                climbs += 1;
                k = skip_ws(b, j + 2);
            }
            if climbs == 0 || climbs < path.len() {
                continue;
            }
            i = k;
            if b.get(k) == Some(&b'{') {
                for (at, head) in group_heads(b, k) {
                    add(&mut uses, &head, at);
                }
            } else if b
                .get(k)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
            {
                add(&mut uses, ident_at(b, k), k);
            }
        }
    }
    uses
}

/// The strongly connected components (Tarjan), each sorted.
fn components(nodes: &BTreeSet<String>, edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    struct State<'a> {
        next: usize,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(v: &'a str, adj: &BTreeMap<&'a str, Vec<&'a str>>, s: &mut State<'a>) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in adj.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, adj, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            comp.sort();
            s.out.push(comp);
        }
    }
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        adj.entry(a.as_str()).or_default().push(b.as_str());
    }
    let mut s = State {
        next: 0,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for n in nodes {
        if !s.index.contains_key(n.as_str()) {
            visit(n, &adj, &mut s);
        }
    }
    s.out
}

fn library_modules(src: &Path) -> BTreeSet<String> {
    let lib = strip(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect()
}

/// One line per strongly connected component of more than one node, naming
/// each of its edges with the lines that make it.
fn cycles(
    nodes: &BTreeSet<String>,
    edges: &BTreeSet<(String, String)>,
    uses: &Uses,
) -> Vec<String> {
    let mut problems = Vec::new();
    for comp in components(nodes, edges) {
        if comp.len() < 2 {
            continue;
        }
        let mut text = format!("import cycle among {}:", comp.join(", "));
        for (a, b) in edges {
            if comp.contains(a) && comp.contains(b) {
                let at = uses.get(&(a.clone(), b.clone()));
                let shown: Vec<&str> = at
                    .into_iter()
                    .flatten()
                    .take(3)
                    .map(String::as_str)
                    .collect();
                let more = at.map_or(0, |v| v.len().saturating_sub(3));
                text.push_str(&format!(
                    "\n    {a} -> {b}  ({}{})",
                    if shown.is_empty() {
                        "declares it".to_string()
                    } else {
                        shown.join(", ")
                    },
                    if more > 0 {
                        format!(", {more} more")
                    } else {
                        String::new()
                    }
                ));
            }
        }
        problems.push(text);
    }
    problems
}

/// Where each submodule of the top-level module directory src/`top`/ names a
/// sibling: `crate::top::x`, `super::x` (with as many `super`s as climb to
/// `top`), and the heads of such `{ ... }` groups. The directory's `mod.rs` is
/// not a node: its own items (the types its children share, such as
/// `parse::ParseError`) are what the children may all name, and it declares
/// and wires them. Test-only code, comments and literals are left out as above.
fn collect_children(src: &Path, top: &str) -> (BTreeSet<String>, Uses) {
    let dir = src.join(top);
    let mut files = Vec::new();
    let mut dirs = vec![dir.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files.sort();
    let children: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(f.strip_prefix(src).unwrap()).get(1).cloned())
        .collect();
    let mut uses = Uses::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap().to_path_buf();
        let path = module_path(&rel);
        let Some(from) = path.get(1).cloned() else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let code = strip_test_items(&strip(&text));
        let b = code.as_bytes();
        let line_of = |at: usize| code[..at].matches('\n').count() + 1;
        let add = |uses: &mut Uses, to: &str, at: usize| {
            if to != from && children.contains(to) {
                uses.entry((from.clone(), to.to_string()))
                    .or_default()
                    .push(format!("src/{}:{}", rel.display(), line_of(at)));
            }
        };
        // The names after `::` at `k`: one, or the heads of a group.
        let heads = |k: usize| -> Vec<(usize, String)> {
            if b.get(k) == Some(&b'{') {
                group_heads(b, k)
            } else if b
                .get(k)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
            {
                vec![(k, ident_at(b, k).to_string())]
            } else {
                Vec::new()
            }
        };
        // `crate::top::x`
        let mut i = 0;
        while let Some(p) = code[i..].find("crate").map(|p| i + p) {
            i = p + "crate".len();
            if p > 0 && (b[p - 1].is_ascii_alphanumeric() || b[p - 1] == b'_') {
                continue;
            }
            let j = skip_ws(b, i);
            if !code[j..].starts_with("::") {
                continue;
            }
            let k = skip_ws(b, j + 2);
            if ident_at(b, k) != top {
                continue;
            }
            let j = skip_ws(b, k + top.len());
            if !code[j..].starts_with("::") {
                continue;
            }
            for (at, head) in heads(skip_ws(b, j + 2)) {
                add(&mut uses, &head, at);
            }
        }
        // `super::x` that climbs exactly to `top`.
        let mut i = 0;
        while let Some(p) = code[i..].find("super").map(|p| i + p) {
            i = p + "super".len();
            if p > 0 && (b[p - 1].is_ascii_alphanumeric() || b[p - 1] == b'_' || b[p - 1] == b':') {
                continue;
            }
            let mut k = p;
            let mut climbs = 0;
            loop {
                if !code[k..].starts_with("super") {
                    break;
                }
                let j = skip_ws(b, k + "super".len());
                if !code[j..].starts_with("::") {
                    break;
                }
                climbs += 1;
                k = skip_ws(b, j + 2);
            }
            if climbs == 0 || climbs + 1 != path.len() {
                continue;
            }
            i = k;
            for (at, head) in heads(k) {
                add(&mut uses, &head, at);
            }
        }
    }
    (children, uses)
}

#[test]
fn no_import_cycle_inside_module_directories() {
    let src = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let modules = library_modules(&src);
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    for top in &modules {
        if !src.join(top).is_dir() {
            continue;
        }
        let (children, uses) = collect_children(&src, top);
        let edges: BTreeSet<(String, String)> = uses.keys().cloned().collect();
        let named = |m: &String| format!("{top}::{m}");
        let children_named: BTreeSet<String> = children.iter().map(named).collect();
        let edges_named: BTreeSet<(String, String)> =
            edges.iter().map(|(a, b)| (named(a), named(b))).collect();
        let uses_named: Uses = uses
            .iter()
            .map(|((a, b), at)| ((named(a), named(b)), at.clone()))
            .collect();
        problems.extend(cycles(&children_named, &edges_named, &uses_named));
        checked.push(format!(
            "{top} ({} submodules, {} edges)",
            children.len(),
            edges.len()
        ));
    }
    assert!(
        checked.iter().any(|c| c.starts_with("parse ")),
        "src/parse/ was not checked: {checked:?}"
    );
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
    println!("checked inside: {}", checked.join(", "));
}

#[test]
fn the_submodule_scanner_finds_a_cycle_between_siblings() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("p")).unwrap();
    std::fs::write(src.join("p/mod.rs"), "mod a;\nmod b;\npub enum E {}\n").unwrap();
    std::fs::write(src.join("p/a.rs"), "use super::b::X;\nuse super::E;\n").unwrap();
    std::fs::write(
        src.join("p/b.rs"),
        "use crate::p::{a::Y, E};\n#[cfg(test)]\nmod tests { use super::super::a; }\n",
    )
    .unwrap();
    let (children, uses) = collect_children(src, "p");
    assert_eq!(children, BTreeSet::from(["a".to_string(), "b".to_string()]));
    let edges: BTreeSet<(String, String)> = uses.keys().cloned().collect();
    let problems = cycles(&children, &edges, &uses);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("a -> b  (src/p/a.rs:1)"),
        "{}",
        problems[0]
    );
    assert!(
        problems[0].contains("b -> a  (src/p/b.rs:1)"),
        "{}",
        problems[0]
    );
}

#[test]
fn no_import_cycle_between_modules() {
    let src = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let modules = library_modules(&src);
    assert!(
        modules.contains("spool") && modules.contains("batch"),
        "src/lib.rs declares {modules:?}"
    );
    let uses = collect(&src, &modules);
    let mut edges: BTreeSet<(String, String)> = uses.keys().cloned().collect();
    let mut problems = Vec::new();
    for (a, b) in ALLOWED {
        if !edges.remove(&(a.to_string(), b.to_string())) {
            problems.push(format!(
                "the allowed edge {a} -> {b} is gone: take it out of ALLOWED"
            ));
        }
    }
    // The root declares (and wires) every module: a module that names one of
    // the root's own items makes a cycle with it.
    for ((a, b), at) in &uses {
        if b == ROOT && edges.contains(&(a.clone(), b.clone())) {
            problems.push(format!(
                "import cycle: {a} names the crate root's items, and the root declares {a} ({})",
                at.join(", ")
            ));
        }
    }
    edges.retain(|(_, b)| b != ROOT);
    problems.extend(cycles(&modules, &edges, &uses));
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
    // The layers, bottom first (`cargo test --test layers -- --nocapture`): a
    // module's layer is one above the highest of the modules it names.
    let mut layer: BTreeMap<&str, usize> = BTreeMap::new();
    while layer.len() < modules.len() {
        for m in &modules {
            let deps: Vec<&str> = edges
                .iter()
                .filter(|(a, _)| a == m)
                .map(|(_, b)| b.as_str())
                .collect();
            if deps.iter().all(|d| layer.contains_key(d)) {
                let l = deps.iter().map(|d| layer[d] + 1).max().unwrap_or(0);
                layer.insert(m, l);
            }
        }
    }
    for l in 0..=layer.values().copied().max().unwrap_or(0) {
        let names: Vec<&str> = layer
            .iter()
            .filter(|(_, &v)| v == l)
            .map(|(k, _)| *k)
            .collect();
        println!("layer {l}: {}", names.join(", "));
    }
}

#[test]
fn the_scanner_reads_paths_as_rustc_does() {
    let code = strip_test_items(&strip(
        "use crate::{a::X, b::{Y, Z}, self};\n// crate::c\nlet s = \"crate::d\"; let c = '\"'; let e = crate::e::f();\n#[cfg(test)]\nmod tests { use crate::g; }\nfn h<'a>(x: &'a str) { super::super::i::j() }\nlet r = r#\"crate::k\"#;\n",
    ));
    assert!(!code.contains("crate::c"), "{code}");
    assert!(!code.contains("crate::d"), "{code}");
    assert!(!code.contains("crate::g"), "{code}");
    assert!(!code.contains("crate::k"), "{code}");
    assert!(code.contains("crate::e::f()"), "{code}");
    assert!(code.contains("super::super::i"), "{code}");
    let at = code.find('{').unwrap();
    let heads: Vec<String> = group_heads(code.as_bytes(), at)
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    assert_eq!(heads, ["a", "b", "self"]);
}
