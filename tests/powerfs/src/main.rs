//! `powerfs`: an in-memory FUSE filesystem that can lose power.
//!
//! `kill -9` of a process keeps everything it wrote: the page cache survives it. A power cut
//! keeps only what was made durable. This filesystem keeps, for every file and directory, the
//! live state (what reads see) and the *durable* state (what a power cut leaves), and on a
//! `cut` command replaces every live state by its durable one — the approach of LazyFS, in a
//! few hundred lines and with no C library (fuser without its `libfuse` feature mounts with
//! mount(2) on /dev/fuse as root, or through Debian's `fusermount3` otherwise).
//!
//! ```text
//! powerfs MOUNTPOINT CONTROL_SOCKET
//! ```
//! prints `ready` once mounted and listening; the control socket (a unix stream socket) takes
//! one command per line and answers one line:
//! - `cut` — unmount (lazily), revert to the durable state, mount again; answers
//!   `ok files_reverted=… bytes_lost=… names_reverted=… nodes_dropped=…`. Cut only when no
//!   process has a file open here (the power-loss test kills the gateway's process group
//!   first): a file still open keeps the old connection alive.
//! - `stats` — `ok fsyncs=… fsyncdirs=… cuts=… nodes=…`;
//! - `quit` — unmount and exit.
//!
//! # Semantics (what survives a cut)
//! Deliberately the strict POSIX reading, simpler and harsher than ext4:
//! - **File contents** survive as of the file's last `fsync`/`fdatasync` (FUSE `fsync`, both
//!   flavours alike). Writes after it, truncations and `fallocate` extensions are lost. A file
//!   never fsynced comes back empty (if its name survives at all). `sync_file_range(2)` never
//!   reaches a FUSE filesystem, so it makes nothing durable here — as on a real disk, where it
//!   does not flush the drive's cache nor the file's metadata either.
//! - **Names** (create, mkdir, unlink, rmdir, rename) survive as of the last `fsync` of the
//!   directory holding them (FUSE `fsyncdir`). A file created and fsynced in a directory that
//!   was not fsynced afterwards disappears; a rename not followed by an fsync of the
//!   directories involved is undone; an unlinked file comes back. (ext4 with its journal would
//!   usually keep the name of a fsynced new file; POSIX does not promise it, and other
//!   filesystems and SD-card FTLs need not either.)
//! - Nodes reachable from no durable name are dropped at the cut.
//! - Not modelled: modes, owners and times (always kept), torn writes inside one `write`
//!   (each write is all or nothing), reordering of durable writes (durability is exact at each
//!   fsync), hard links and symlinks (refused), locks (the kernel keeps `flock` locks locally).
//!
//! Everything lives in this process's memory, in 64 KiB copy-on-write chunks: an fsync copies
//! only pointers, and a write after it copies the chunks it touches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const CHUNK: u64 = 64 * 1024;
/// Attribute and entry cache time of the kernel. Safe to be non-zero: a cut unmounts, which
/// drops every cache of the old mount.
const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;

/// File contents as copy-on-write chunks (`None`: a hole, reads as zeros).
#[derive(Clone, Default)]
struct Data {
    len: u64,
    chunks: Vec<Option<Arc<Vec<u8>>>>,
}

impl Data {
    fn read(&self, off: u64, size: usize) -> Vec<u8> {
        if off >= self.len {
            return Vec::new();
        }
        let end = (off + size as u64).min(self.len);
        let mut out = Vec::with_capacity((end - off) as usize);
        let mut pos = off;
        while pos < end {
            let ci = (pos / CHUNK) as usize;
            let co = (pos % CHUNK) as usize;
            let n = (CHUNK - co as u64).min(end - pos) as usize;
            match self.chunks.get(ci).and_then(|c| c.as_ref()) {
                Some(c) => out.extend_from_slice(&c[co..co + n]),
                None => out.resize(out.len() + n, 0),
            }
            pos += n as u64;
        }
        out
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        let end = off + data.len() as u64;
        let need = end.div_ceil(CHUNK) as usize;
        if self.chunks.len() < need {
            self.chunks.resize(need, None);
        }
        let (mut pos, mut src) = (off, 0usize);
        while pos < end {
            let ci = (pos / CHUNK) as usize;
            let co = (pos % CHUNK) as usize;
            let n = (CHUNK - co as u64).min(end - pos) as usize;
            let c = self.chunks[ci].get_or_insert_with(|| Arc::new(vec![0; CHUNK as usize]));
            Arc::make_mut(c)[co..co + n].copy_from_slice(&data[src..src + n]);
            pos += n as u64;
            src += n;
        }
        self.len = self.len.max(end);
    }

    fn set_len(&mut self, len: u64) {
        if len < self.len {
            self.chunks.truncate(len.div_ceil(CHUNK) as usize);
            // Zero the cut-off tail of the last chunk: a later extension must read zeros.
            let co = (len % CHUNK) as usize;
            if co != 0 {
                if let Some(Some(c)) = self.chunks.last_mut() {
                    Arc::make_mut(c)[co..].fill(0);
                }
            }
        }
        self.len = len;
    }
}

#[derive(Clone)]
enum Content {
    File(Data),
    Dir(BTreeMap<OsString, u64>),
}

impl Content {
    fn empty_like(&self) -> Content {
        match self {
            Content::File(_) => Content::File(Data::default()),
            Content::Dir(_) => Content::Dir(BTreeMap::new()),
        }
    }
}

struct Node {
    content: Content,
    /// What a cut leaves: the content at the last fsync (`None`: never fsynced).
    durable: Option<Content>,
    /// Bytes written (or truncated away) since the last fsync: what a cut loses.
    dirty_bytes: u64,
    /// Names changed since the last fsync of this directory.
    dirty_names: u64,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl Node {
    fn new(content: Content, perm: u16, req: &Request<'_>) -> Node {
        let now = SystemTime::now();
        Node {
            content,
            durable: None,
            dirty_bytes: 0,
            dirty_names: 0,
            perm,
            uid: req.uid(),
            gid: req.gid(),
            atime: now,
            mtime: now,
            ctime: now,
        }
    }
}

#[derive(Default)]
struct Stats {
    fsyncs: u64,
    fsyncdirs: u64,
    cuts: u64,
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    stats: Stats,
}

/// What one cut dropped.
struct CutReport {
    files_reverted: u64,
    bytes_lost: u64,
    names_reverted: u64,
    nodes_dropped: u64,
}

impl State {
    fn new() -> State {
        let now = SystemTime::now();
        let root = Node {
            // An empty formatted filesystem: the root exists durably.
            content: Content::Dir(BTreeMap::new()),
            durable: Some(Content::Dir(BTreeMap::new())),
            dirty_bytes: 0,
            dirty_names: 0,
            perm: 0o755,
            uid: 0,
            gid: 0,
            atime: now,
            mtime: now,
            ctime: now,
        };
        State {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            stats: Stats::default(),
        }
    }

    /// Power cut: every node back to its durable content, then drop what no durable name
    /// reaches any more.
    fn cut(&mut self) -> CutReport {
        let mut rep = CutReport {
            files_reverted: 0,
            bytes_lost: 0,
            names_reverted: 0,
            nodes_dropped: 0,
        };
        for n in self.nodes.values_mut() {
            match &n.content {
                Content::File(_) if n.dirty_bytes > 0 => {
                    rep.files_reverted += 1;
                    rep.bytes_lost += n.dirty_bytes;
                }
                Content::Dir(_) => rep.names_reverted += n.dirty_names,
                _ => {}
            }
            n.content = n.durable.clone().unwrap_or_else(|| n.content.empty_like());
            n.dirty_bytes = 0;
            n.dirty_names = 0;
        }
        let mut reachable = HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if let Some(Node {
                content: Content::Dir(entries),
                ..
            }) = self.nodes.get(&ino)
            {
                for child in entries.values() {
                    if reachable.insert(*child) {
                        todo.push(*child);
                    }
                }
            }
        }
        let before = self.nodes.len();
        self.nodes.retain(|ino, _| reachable.contains(ino));
        rep.nodes_dropped = (before - self.nodes.len()) as u64;
        self.stats.cuts += 1;
        rep
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &n.content {
            Content::File(d) => (FileType::RegularFile, d.len, 1),
            Content::Dir(e) => (FileType::Directory, 4096, 2 + e.len() as u32),
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            crtime: n.ctime,
            kind,
            perm: n.perm,
            nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn dir(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, i32> {
        match self.nodes.get(&ino).map(|n| &n.content) {
            Some(Content::Dir(e)) => Ok(e),
            Some(_) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Node, i32> {
        match self.nodes.get_mut(&ino) {
            Some(n) if matches!(n.content, Content::Dir(_)) => Ok(n),
            Some(_) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn entries_mut(n: &mut Node) -> &mut BTreeMap<OsString, u64> {
        n.dirty_names += 1;
        n.mtime = SystemTime::now();
        match &mut n.content {
            Content::Dir(e) => e,
            Content::File(_) => unreachable!("checked by dir_mut"),
        }
    }

    /// A file's node and its data (disjoint fields of the node).
    fn data_mut(&mut self, ino: u64) -> Result<(&mut Data, &mut u64, &mut SystemTime), i32> {
        let n = self.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        match &mut n.content {
            Content::File(d) => Ok((d, &mut n.dirty_bytes, &mut n.mtime)),
            Content::Dir(_) => Err(libc::EISDIR),
        }
    }

    /// Link a new node `content` as `name` in `parent`.
    fn add(
        &mut self,
        parent: u64,
        name: &OsStr,
        content: Content,
        perm: u16,
        req: &Request<'_>,
    ) -> Result<u64, i32> {
        if self.dir(parent)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node::new(content, perm, req));
        let p = self.dir_mut(parent)?;
        Self::entries_mut(p).insert(name.to_owned(), ino);
        Ok(ino)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), i32> {
        let ino = *self.dir(parent)?.get(name).ok_or(libc::ENOENT)?;
        match (&self.nodes[&ino].content, want_dir) {
            (Content::Dir(e), true) if !e.is_empty() => return Err(libc::ENOTEMPTY),
            (Content::Dir(_), false) => return Err(libc::EISDIR),
            (Content::File(_), true) => return Err(libc::ENOTDIR),
            _ => {}
        }
        let p = self.dir_mut(parent)?;
        Self::entries_mut(p).remove(name);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), i32> {
        if flags & libc::RENAME_EXCHANGE != 0 || flags & libc::RENAME_WHITEOUT != 0 {
            return Err(libc::EINVAL);
        }
        let src = *self.dir(parent)?.get(name).ok_or(libc::ENOENT)?;
        let src_is_dir = matches!(self.nodes[&src].content, Content::Dir(_));
        if let Some(&dst) = self.dir(newparent)?.get(newname) {
            if dst == src {
                return Ok(());
            }
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(libc::EEXIST);
            }
            match (&self.nodes[&dst].content, src_is_dir) {
                (Content::Dir(e), true) if !e.is_empty() => return Err(libc::ENOTEMPTY),
                (Content::Dir(_), false) => return Err(libc::EISDIR),
                (Content::File(_), true) => return Err(libc::ENOTDIR),
                _ => {}
            }
        }
        Self::entries_mut(self.dir_mut(parent)?).remove(name);
        Self::entries_mut(self.dir_mut(newparent)?).insert(newname.to_owned(), src);
        Ok(())
    }

    fn fsync(&mut self, ino: u64) -> Result<(), i32> {
        let n = self.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        n.durable = Some(n.content.clone());
        match n.content {
            Content::File(_) => {
                n.dirty_bytes = 0;
                self.stats.fsyncs += 1;
            }
            Content::Dir(_) => {
                n.dirty_names = 0;
                self.stats.fsyncdirs += 1;
            }
        }
        Ok(())
    }
}

/// The FUSE face of the shared [`State`] (the control thread reverts it between mounts).
struct PowerFs(Arc<Mutex<State>>);

impl PowerFs {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl Filesystem for PowerFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let st = self.st();
        match st.dir(parent).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => reply.entry(&TTL, &st.attr(ino).unwrap(), 0),
            Ok(None) => reply.error(libc::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.st().attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut st = self.st();
        if let Some(size) = size {
            match st.data_mut(ino) {
                Ok((d, dirty, mtime)) => {
                    *dirty += d.len.abs_diff(size).max(1);
                    d.set_len(size);
                    *mtime = SystemTime::now();
                }
                Err(e) => return reply.error(e),
            }
        }
        let Some(n) = st.nodes.get_mut(&ino) else {
            return reply.error(libc::ENOENT);
        };
        let t = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        if let Some(m) = mode {
            n.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            n.uid = u;
        }
        if let Some(g) = gid {
            n.gid = g;
        }
        if let Some(a) = atime {
            n.atime = t(a);
        }
        if let Some(m) = mtime {
            n.mtime = t(m);
        }
        n.ctime = SystemTime::now();
        reply.attr(&TTL, &st.attr(ino).unwrap());
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(libc::EPERM);
        }
        let mut st = self.st();
        let c = Content::File(Data::default());
        match st.add(parent, name, c, perm(mode, umask), req) {
            Ok(ino) => reply.entry(&TTL, &st.attr(ino).unwrap(), 0),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.st();
        let c = Content::Dir(BTreeMap::new());
        match st.add(parent, name, c, perm(mode, umask), req) {
            Ok(ino) => reply.entry(&TTL, &st.attr(ino).unwrap(), 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.st().remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.st().remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        match self.st().rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        // Stateless handles: every operation names its inode.
        match self.st().nodes.contains_key(&ino) {
            true => reply.opened(0, 0),
            false => reply.error(libc::ENOENT),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let st = self.st();
        match st.nodes.get(&ino).map(|n| &n.content) {
            Some(Content::File(d)) => reply.data(&d.read(offset.max(0) as u64, size as usize)),
            Some(Content::Dir(_)) => reply.error(libc::EISDIR),
            None => reply.error(libc::ENOENT),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut st = self.st();
        match st.data_mut(ino) {
            Ok((d, dirty, mtime)) => {
                d.write(offset.max(0) as u64, data);
                *dirty += data.len() as u64;
                *mtime = SystemTime::now();
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        match self.st().fsync(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.st().dir(ino) {
            Ok(_) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.st();
        let entries = match st.dir(ino) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino, FileType::Directory, OsStr::new(".")),
            (ino, FileType::Directory, OsStr::new("..")),
        ];
        let all = dots.into_iter().chain(entries.iter().map(|(name, &child)| {
            let kind = match st.nodes[&child].content {
                Content::File(_) => FileType::RegularFile,
                Content::Dir(_) => FileType::Directory,
            };
            (child, kind, name.as_os_str())
        }));
        for (i, (child, kind, name)) in all.enumerate().skip(offset.max(0) as usize) {
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        match self.st().fsync(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        // 64 GiB, nearly free: space is not what this filesystem tests.
        let blocks = 1u64 << 24;
        reply.statfs(
            blocks,
            blocks - 1,
            blocks - 1,
            1 << 20,
            (1 << 20) - 1,
            4096,
            255,
            4096,
        );
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.st();
        let existing = match st.dir(parent) {
            Ok(e) => e.get(name).copied(),
            Err(e) => return reply.error(e),
        };
        let ino = match existing {
            Some(_) if flags & libc::O_EXCL != 0 => return reply.error(libc::EEXIST),
            Some(ino) => ino,
            None => {
                let c = Content::File(Data::default());
                match st.add(parent, name, c, perm(mode, umask), req) {
                    Ok(ino) => ino,
                    Err(e) => return reply.error(e),
                }
            }
        };
        reply.created(&TTL, &st.attr(ino).unwrap(), 0, 0, 0);
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(libc::EOPNOTSUPP);
        }
        let mut st = self.st();
        match st.data_mut(ino) {
            Ok((d, dirty, _)) => {
                let end = (offset + length).max(0) as u64;
                if end > d.len {
                    *dirty += end - d.len;
                    d.set_len(end);
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }
}

/// One mount of the shared state, served by a thread until it is unmounted.
struct Mounted {
    thread: JoinHandle<()>,
}

fn mount(state: &Arc<Mutex<State>>, at: &Path) -> std::io::Result<Mounted> {
    let opts = [
        MountOption::FSName("powerfs".into()),
        MountOption::RW,
        MountOption::NoAtime,
    ];
    let mut session = fuser::Session::new(PowerFs(state.clone()), at, &opts)?;
    let thread = std::thread::spawn(move || {
        if let Err(e) = session.run() {
            eprintln!("powerfs: session ended: {e}");
        }
    });
    Ok(Mounted { thread })
}

/// Unmount (lazily: a cut does not wait for anyone) and wait for the serving thread to see
/// the end of its connection.
fn unmount(m: Mounted, at: &Path) -> Result<(), String> {
    let c = std::ffi::CString::new(at.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(format!(
            "umount {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        ));
    }
    let t0 = Instant::now();
    while !m.thread.is_finished() {
        if t0.elapsed() > Duration::from_secs(20) {
            return Err("a file is still open on the old mount (kill its process first)".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = m.thread.join();
    Ok(())
}

fn serve(
    conn: UnixStream,
    state: &Arc<Mutex<State>>,
    at: &Path,
    mounted: &mut Option<Mounted>,
) -> std::io::Result<bool> {
    let mut w = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        let answer = match line.trim() {
            "cut" => {
                let m = mounted.take().expect("mounted between commands");
                match unmount(m, at) {
                    Ok(()) => {
                        let rep = state.lock().unwrap_or_else(|e| e.into_inner()).cut();
                        match mount(state, at) {
                            Ok(m) => {
                                *mounted = Some(m);
                                format!(
                                    "ok files_reverted={} bytes_lost={} names_reverted={} nodes_dropped={}",
                                    rep.files_reverted, rep.bytes_lost, rep.names_reverted, rep.nodes_dropped
                                )
                            }
                            Err(e) => {
                                writeln!(w, "error mounting again: {e}")?;
                                return Ok(true);
                            }
                        }
                    }
                    Err(e) => {
                        writeln!(w, "error {e}")?;
                        return Ok(true);
                    }
                }
            }
            "stats" => {
                let st = state.lock().unwrap_or_else(|e| e.into_inner());
                format!(
                    "ok fsyncs={} fsyncdirs={} cuts={} nodes={}",
                    st.stats.fsyncs,
                    st.stats.fsyncdirs,
                    st.stats.cuts,
                    st.nodes.len()
                )
            }
            "quit" => {
                if let Some(m) = mounted.take() {
                    let _ = unmount(m, at);
                }
                // Exit even if the asker hung up without reading the answer.
                let _ = writeln!(w, "ok");
                return Ok(true);
            }
            other => format!("error unknown command {other:?} (cut, stats, quit)"),
        };
        writeln!(w, "{answer}")?;
    }
    Ok(false)
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let [at, sock] = &args[..] else {
        eprintln!("usage: powerfs MOUNTPOINT CONTROL_SOCKET");
        std::process::exit(2);
    };
    let at = PathBuf::from(at);
    let sock = PathBuf::from(sock);
    let state = Arc::new(Mutex::new(State::new()));
    let mut mounted = match mount(&state, &at) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("powerfs: cannot mount at {}: {e}", at.display());
            std::process::exit(1);
        }
    };
    let _ = std::fs::remove_file(&sock);
    let listener = match UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("powerfs: cannot listen on {}: {e}", sock.display());
            if let Some(m) = mounted.take() {
                let _ = unmount(m, &at);
            }
            std::process::exit(1);
        }
    };
    println!("ready");
    let _ = std::io::stdout().flush();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        match serve(conn, &state, &at, &mut mounted) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => eprintln!("powerfs: control connection: {e}"),
        }
    }
    if let Some(m) = mounted.take() {
        let _ = unmount(m, &at);
    }
    let _ = std::fs::remove_file(&sock);
}
