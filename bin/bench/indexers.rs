//! Evaluation of pack indexers (issue 23): `git index-pack --stdin`, as the
//! node runs it for every pack it materializes, against gitoxide's
//! `gix-pack` (`Bundle::write_to_directory`, deltas resolved on every core),
//! on packs of several shapes: the two real-shaped repositories, many small
//! objects, big incompressible binaries and long delta chains. Both compute
//! every object id from content; the two indexes are compared entry by entry
//! (`git show-index`: id, offset, CRC-32). The node's own indexer, `knotd
//! index-pack` (gix-pack in a child process, plus the pass that tells
//! whether the pack is connected), is timed beside them.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::AtomicBool,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{
    realrepo::{Corpus, REAL, REAL_SMALL, RealRepo},
    repogen::{git, git_command},
    report::{ScenarioReport, median, round3},
    scenarios::Plan,
};

fn progress(text: &str) {
    eprintln!("knotd-bench: indexers: {text}");
}

/// Builds a repository of one shape at a path, from a seed.
type Build = fn(&Path, u64) -> Result<()>;

/// The indexers scenario.
pub async fn indexers(plan: &Plan) -> Result<ScenarioReport> {
    let plan_work = plan.work.join("indexers");
    let (iterations, seed) = (plan.iterations.max(1), plan.seed);
    let knotd = plan.knotd.clone();
    tokio::task::spawn_blocking(move || run(&plan_work, &knotd, iterations, seed)).await?
}

fn run(work: &Path, knotd: &Path, iterations: usize, seed: u64) -> Result<ScenarioReport> {
    let mut report = ScenarioReport::new("indexers");
    std::fs::create_dir_all(work)?;
    report.param("gix_pack_version", "0.78");
    report.param("threads", std::thread::available_parallelism()?.get());
    let shapes: [(&str, Build); 5] = [
        ("many_small", many_small),
        ("big_binaries", big_binaries),
        ("deep_deltas", deep_deltas),
        ("real_small", |dir, seed| real(dir, seed, false)),
        ("real", |dir, seed| real(dir, seed, true)),
    ];
    for (name, build) in shapes {
        progress(&format!("building the {name} repository"));
        let repo = work.join(name);
        build(&repo, seed)?;
        let pack = only_pack(&repo)?;
        let bytes = std::fs::metadata(&pack)?.len();
        let objects: u64 = git(&repo, &["count-objects", "-v"])?
            .lines()
            .find_map(|l| l.strip_prefix("in-pack: "))
            .context("count-objects")?
            .trim()
            .parse()?;
        report.fig(format!("{name}_pack_bytes"), bytes as f64, "bytes");
        report.fig(format!("{name}_objects"), objects as f64, "objects");
        report.fig(
            format!("{name}_max_delta_chain"),
            max_chain(&repo, &pack)? as f64,
            "deltas",
        );
        let (mut git_s, mut gix_s, mut node_s) = (Vec::new(), Vec::new(), Vec::new());
        let mut same = true;
        for i in 0..iterations {
            progress(&format!("{name}: {}/{iterations}", i + 1));
            let order = [[0, 1, 2], [1, 2, 0], [2, 0, 1]][i % 3];
            let mut indexes = [None, None, None];
            for which in order {
                let dest = work.join(format!("{name}-index-{which}"));
                let _ = std::fs::remove_dir_all(&dest);
                std::fs::create_dir_all(&dest)?;
                let (took, idx) = match which {
                    0 => git_index_pack(&dest, &pack)?,
                    1 => gix_index(&dest, &pack)?,
                    _ => knotd_index_pack(knotd, &dest, &pack)?,
                };
                [&mut git_s, &mut gix_s, &mut node_s][which].push(took);
                indexes[which] = Some(show_index(&idx)?);
            }
            same &= indexes[0].is_some() && indexes[0] == indexes[1] && indexes[0] == indexes[2];
            for which in 0..3 {
                let _ = std::fs::remove_dir_all(work.join(format!("{name}-index-{which}")));
            }
        }
        let (g, x, n) = (median(&git_s), median(&gix_s), median(&node_s));
        report.fig(format!("{name}_git_index_pack_ms"), round3(g * 1e3), "ms");
        report.fig(format!("{name}_gix_pack_ms"), round3(x * 1e3), "ms");
        report.fig(format!("{name}_gix_ratio"), round3(x / g), "x");
        report.fig(format!("{name}_knotd_index_pack_ms"), round3(n * 1e3), "ms");
        report.fig(format!("{name}_knotd_index_pack_ratio"), round3(n / g), "x");
        report.fig(
            format!("{name}_same_index"),
            if same { 1.0 } else { 0.0 },
            "bool",
        );
        if !same {
            bail!("{name}: gix-pack wrote an index that differs from git's");
        }
        std::fs::remove_dir_all(&repo)?;
    }
    Ok(report)
}

/// `git index-pack --stdin` of `pack` into a fresh bare repository at
/// `dest`, as the node runs it; returns seconds and the `.idx` written.
fn git_index_pack(dest: &Path, pack: &Path) -> Result<(f64, PathBuf)> {
    git(dest, &["init", "-q", "--bare"])?;
    let started = Instant::now();
    let out = git_command(dest)
        .args([
            "index-pack",
            "--stdin",
            "--fix-thin",
            "--check-self-contained-and-connected",
        ])
        .stdin(File::open(pack)?)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    let took = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "git index-pack: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let idx = only_file(&dest.join("objects/pack"), "idx")?;
    Ok((took, idx))
}

/// `gix-pack` indexing `pack` read as a stream into `dest`.
fn gix_index(dest: &Path, pack: &Path) -> Result<(f64, PathBuf)> {
    let interrupt = AtomicBool::new(false);
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(64 * 1024, File::open(pack)?);
    let outcome = gix_pack::Bundle::write_to_directory(
        &mut reader,
        Some(dest),
        &mut gix_utils::progress::Discard,
        &interrupt,
        None::<gix_object::find::Never>,
        gix_hash::Kind::Sha1,
        gix_pack::bundle::write::Options::default(),
    )
    .map_err(|e| anyhow::anyhow!("gix-pack: {e:?}"))?;
    let took = started.elapsed().as_secs_f64();
    let idx = outcome.index_path.context("gix-pack wrote no index")?;
    Ok((took, idx))
}

/// The node's indexer: `knotd index-pack` in a child process reading
/// `pack` from its standard input, into `dest/pack`, with the connectivity
/// pass; it must find the pack connected.
fn knotd_index_pack(knotd: &Path, dest: &Path, pack: &Path) -> Result<(f64, PathBuf)> {
    let dir = dest.join("pack");
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let out = Command::new(knotd)
        .arg("index-pack")
        .arg("--pack-dir")
        .arg(&dir)
        .stdin(File::open(pack)?)
        .output()?;
    let took = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.ends_with("\tconnected\n") {
        bail!(
            "knotd index-pack: {stdout:?} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((took, only_file(&dir, "idx")?))
}

/// `git show-index` of an index: one line per object, id, offset, CRC-32.
fn show_index(idx: &Path) -> Result<String> {
    let out = Command::new("git")
        .arg("show-index")
        .stdin(File::open(idx)?)
        .output()?;
    if !out.status.success() {
        bail!("git show-index failed on {}", idx.display());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The longest delta chain of `pack` (`git verify-pack -s`).
fn max_chain(repo: &Path, pack: &Path) -> Result<u64> {
    let idx = pack.with_extension("idx");
    let out = git(repo, &["verify-pack", "-s", idx.to_str().context("path")?])?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix("chain length = "))
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .max()
        .unwrap_or(0))
}

fn only_pack(repo: &Path) -> Result<PathBuf> {
    only_file(&repo.join("objects/pack"), "pack")
}

fn only_file(dir: &Path, ext: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    match &found[..] {
        [one] => Ok(one.clone()),
        _ => bail!("{} .{ext} files in {}", found.len(), dir.display()),
    }
}

/// A deterministic byte stream.
fn stream(seed: u64, label: &str) -> blake3::OutputReader {
    let mut hasher = blake3::Hasher::new_derive_key("knotd-bench indexers v1");
    hasher.update(&seed.to_le_bytes());
    hasher.update(label.as_bytes());
    hasher.finalize_xof()
}

/// Feed `write` to `git fast-import` in a new bare repository at `dir`, then
/// pack everything into one pack as `git gc` would.
fn import(
    dir: &Path,
    repack: &[&str],
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q", "--bare", "-b", "main"])?;
    let mut child = git_command(dir)
        .args(["fast-import", "--quiet", "--done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = BufWriter::with_capacity(1 << 20, child.stdin.take().context("stdin")?);
    let written = write(&mut stdin).and_then(|()| Ok(stdin.write_all(b"done\n")?));
    drop(stdin);
    let out = child.wait_with_output()?;
    written?;
    if !out.status.success() {
        bail!(
            "git fast-import: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut args = vec!["repack", "-a", "-d", "-f", "-q"];
    args.extend_from_slice(repack);
    git(dir, &args)?;
    Ok(())
}

fn blob(out: &mut dyn Write, mark: usize, data: &[u8]) -> Result<()> {
    writeln!(out, "blob\nmark :{mark}\ndata {}", data.len())?;
    out.write_all(data)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn commit(out: &mut dyn Write, n: usize, files: &[(String, usize)]) -> Result<()> {
    let message = format!("commit {n}");
    writeln!(
        out,
        "commit refs/heads/main\ncommitter Bench <bench@example.org> {} +0000\ndata {}\n{message}",
        1_704_067_200 + n,
        message.len()
    )?;
    for (path, mark) in files {
        writeln!(out, "M 100644 :{mark} {path}")?;
    }
    writeln!(out)?;
    Ok(())
}

/// 100,000 small text files (100–400 bytes) in 1,000 directories, one commit.
fn many_small(dir: &Path, seed: u64) -> Result<()> {
    import(dir, &[], |out| {
        let mut rng = stream(seed, "many_small");
        let mut files = Vec::new();
        for i in 0..100_000 {
            let mut len = [0u8; 2];
            rng.fill(&mut len);
            let len = 100 + (u16::from_le_bytes(len) % 300) as usize;
            let mut raw = vec![0u8; len];
            rng.fill(&mut raw);
            let text: Vec<u8> = raw.iter().map(|b| b'a' + b % 26).collect();
            blob(out, i + 1, &text)?;
            files.push((format!("d{:03}/f{i}.txt", i % 1000), i + 1));
        }
        commit(out, 0, &files)
    })
}

/// Eight incompressible 12 MiB files over four commits.
fn big_binaries(dir: &Path, seed: u64) -> Result<()> {
    import(dir, &[], |out| {
        let mut rng = stream(seed, "big_binaries");
        let mut files = Vec::new();
        for i in 0..8 {
            let mut data = vec![0u8; 12 << 20];
            rng.fill(&mut data);
            blob(out, i + 1, &data)?;
            files.push((format!("assets/blob{i}.bin"), i + 1));
            if i % 2 == 1 {
                commit(out, i, &files)?;
            }
        }
        Ok(())
    })
}

/// One 256 KiB text file edited 3,000 times, a few lines each time, packed
/// with chains up to 4,095 deltas deep.
fn deep_deltas(dir: &Path, seed: u64) -> Result<()> {
    import(dir, &["--depth=4095", "--window=10"], |out| {
        let mut rng = stream(seed, "deep_deltas");
        let mut lines: Vec<Vec<u8>> = (0..4096)
            .map(|_| {
                let mut raw = [0u8; 63];
                rng.fill(&mut raw);
                raw.iter().map(|b| b'a' + b % 26).collect()
            })
            .collect();
        for n in 0..3000 {
            for _ in 0..3 {
                let mut pick = [0u8; 2];
                rng.fill(&mut pick);
                let line = (u16::from_le_bytes(pick) % 4096) as usize;
                rng.fill(&mut lines[line][..8]);
                for b in &mut lines[line][..8] {
                    *b = b'a' + *b % 26;
                }
            }
            let text = lines.join(&b'\n');
            blob(out, n + 1, &text)?;
            commit(out, n, &[("src/main.txt".into(), n + 1)])?;
        }
        Ok(())
    })
}

/// The real-shaped repositories of the `real` scenario.
fn real(dir: &Path, seed: u64, large: bool) -> Result<()> {
    let spec = if large { REAL } else { REAL_SMALL };
    let cargo = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"));
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
    let corpus = Corpus::load(&lock, &cargo, spec.crates)?;
    RealRepo::create(dir, spec, seed, corpus)?;
    Ok(())
}
