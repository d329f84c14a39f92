//! Queue, sync, removal, restart, rejoin and write-back.

use std::time::Duration;

use super::*;

/// The rollback-and-freeze attack: the follower's copy of the record lags
/// behind gossip; a stranger announces the previous state under its own key
/// with the highest seq.
#[test]
fn no_more_jobs_run_than_allowed_and_the_rest_wait_their_turn() {
    // Three slots: two for background work, one kept for interactive work.
    let mut sim = Sim::new(3);
    let author = key(1);
    let mut started = Vec::new();
    for n in 0..5 {
        let id = rid(&format!("did:plc:owner/r{n}"));
        sim.command(CoreCommand::AddRepo {
            repo_id: id.clone(),
            locator: None,
            peers: vec![hint(&author)],
        });
        let statement = Statement {
            repo_id: id.to_string(),
            head: None,
            manifest: [n + 1; 32],
            seq: T0_MS,
            publisher: *author.public().as_bytes(),
        }
        .sign(&author);
        let fx = sim.event(Event::Announcement {
            repo: id.clone(),
            announcement: Box::new(Announcement::new(statement, &author, vec![])),
            via: Via::Gossip,
        });
        started.extend(fx.iter().filter_map(|e| match e {
            Effect::StartJob { repo, job, .. } => Some((repo.clone(), *job)),
            _ => None,
        }));
    }
    assert_eq!(started.len(), 2);
    assert_eq!(sim.core.job_load(), (2, 3));
    let (first, job) = started[0].clone();
    let fx = sim.event(Event::JobDone {
        repo: first,
        job,
        result: Err("boom".into()),
        faults: vec![],
    });
    assert_eq!(jobs(&fx).len(), 1, "a finished job frees a slot");
}

#[test]
fn a_newer_target_arriving_during_a_job_runs_right_after_it() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], locator());
    let fx = sim.announce(&author, &author, 2, T0_MS);
    let (job, _) = fetch_job(&fx).unwrap();
    // While it runs, the record names a newer state.
    let fx = sim.poll(record(Some(3), Some(T0_MS + 50), &[&author]));
    assert!(jobs(&fx).is_empty(), "one job per repository");
    let fx = sim.finish(job, 2);
    let (_, m) = fetch_job(&fx).expect("the newer target starts at once");
    assert_eq!(m, manifest(3));
}

#[test]
fn a_sync_poll_is_handled_once_and_answers_once() {
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    sim.poll(record(Some(2), Some(T0_MS), &[]));
    let job = sim.core.repos[&repo()].job.as_ref().unwrap().id();
    sim.finish(job, 2);
    let (reply, fx) = sim.command(CoreCommand::Sync { repo_id: repo() });
    assert_eq!(
        fx.iter()
            .filter(|e| matches!(e, Effect::PollRecord { .. }))
            .count(),
        1
    );
    assert!(reply_to(&fx, reply).is_none(), "waits for the poll");
    let fx = sim.poll(record(Some(2), Some(T0_MS), &[]));
    let Some(Reply::Ok(Payload::Synced(report))) = reply_to(&fx, reply) else {
        panic!("{fx:?}")
    };
    assert_eq!(report.message, "up to date");
    // The next scheduled poll finds no caller to answer.
    let fx = sim.poll(record(Some(2), Some(T0_MS), &[]));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Reply { .. })));
}

#[test]
fn a_sync_waiting_for_a_first_state_gives_up_only_for_its_round() {
    let mut sim = Sim::new(4);
    let seeder = key(2);
    sim.add(vec![hint(&seeder)], None);
    let (first, fx) = sim.command(CoreCommand::Sync { repo_id: repo() });
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Pull { peer, .. } if *peer == seeder.public()))
    );
    let round = sim.core.repos[&repo()].sync.first_state_round.unwrap();
    sim.advance(Duration::from_secs(31));
    let fx = sim.event(Event::Timer(TimerKey::FirstState(repo(), round)));
    assert!(matches!(reply_to(&fx, first), Some(Reply::Error(e)) if e.contains("no state")));
    // A second round; the first round's timer firing again changes nothing.
    let (second, _) = sim.command(CoreCommand::Sync { repo_id: repo() });
    let fx = sim.event(Event::Timer(TimerKey::FirstState(repo(), round)));
    assert!(reply_to(&fx, second).is_none());
    // A state arrives: the caller gets it.
    let fx = sim.announce(&key(1), &seeder, 2, T0_MS);
    let (job, _) = fetch_job(&fx).unwrap();
    let fx = sim.finish(job, 2);
    assert!(matches!(
        reply_to(&fx, second),
        Some(Reply::Ok(Payload::Synced(_)))
    ));
}

#[test]
fn a_failed_fetch_is_retried_with_backoff_while_still_wanted() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    let fx = sim.announce(&author, &author, 2, T0_MS);
    let (job, _) = fetch_job(&fx).unwrap();
    let fx = sim.event(Event::JobDone {
        repo: repo(),
        job,
        result: Err("no provider".into()),
        faults: vec![],
    });
    let at = fx
        .iter()
        .find_map(|e| match e {
            Effect::SetTimer {
                key: TimerKey::Retry(_),
                at,
            } => Some(*at),
            _ => None,
        })
        .unwrap();
    assert_eq!(at, sim.now().at + Duration::from_secs(5));
    assert!(sim.core.summaries()[0].last_error.as_deref() == Some("no provider"));
    sim.advance(Duration::from_secs(5));
    let fx = sim.event(Event::Timer(TimerKey::Retry(repo())));
    assert!(fetch_job(&fx).is_some());
}

#[test]
fn a_failed_first_publish_leaves_no_trace() {
    let mut sim = Sim::new(4);
    let (reply, job, _) = sim.start_publish();
    let fx = sim.event(Event::JobDone {
        repo: repo(),
        job,
        result: Err("not a git repository".into()),
        faults: vec![],
    });
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Error(_))));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Remove(_))))
    );
    assert!(matches!(jobs(&fx)[..], [(_, JobSpec::Discard)]));
    assert!(sim.core.summaries().is_empty());
}

#[test]
fn removal_waits_for_the_running_job_and_a_new_entry_waits_for_the_removal() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    let fx = sim.announce(&author, &author, 2, T0_MS);
    let (job, _) = fetch_job(&fx).unwrap();
    let (reply, fx) = sim.command(CoreCommand::RemoveRepo { repo_id: repo() });
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Ok(_))));
    assert!(jobs(&fx).is_empty(), "the fetch still runs");
    assert!(sim.core.summaries().is_empty());
    // Publishing under the same id again is accepted, and waits.
    let (publish, fx) = sim.command(CoreCommand::Publish {
        repo_id: repo(),
        source: "/src".into(),
        force: false,
        expected_manifest: None,
    });
    assert!(jobs(&fx).is_empty() && reply_to(&fx, publish).is_none());
    let fx = sim.finish(job, 2);
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Held(..))))
    );
    let discard = fx
        .iter()
        .find_map(|e| match e {
            Effect::StartJob {
                job,
                spec: JobSpec::Discard,
                ..
            } => Some(*job),
            _ => None,
        })
        .expect("then the removed repository's content is deleted");
    let fx = sim.event(Event::JobDone {
        repo: repo(),
        job: discard,
        result: Ok(info(0)),
        faults: vec![],
    });
    assert!(
        matches!(
            jobs(&fx)[..],
            [(_, JobSpec::Publish { previous: None, .. })]
        ),
        "then the new publish runs: {fx:?}"
    );
}

#[test]
fn a_removal_without_a_running_job_answers_once_the_content_is_gone() {
    let mut sim = Sim::new(4);
    sim.add(vec![], None);
    let (reply, fx) = sim.command(CoreCommand::RemoveRepo { repo_id: repo() });
    assert!(reply_to(&fx, reply).is_none());
    let job = fx
        .iter()
        .find_map(|e| match e {
            Effect::StartJob {
                job,
                spec: JobSpec::Discard,
                ..
            } => Some(*job),
            _ => None,
        })
        .unwrap();
    let fx = sim.event(Event::JobDone {
        repo: repo(),
        job,
        result: Ok(info(0)),
        faults: vec![],
    });
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Ok(_))));
}

#[test]
fn a_restart_checks_held_states_and_resumes_an_interrupted_record_fetch() {
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    sim.poll(record(Some(2), Some(T0_MS), &[]));
    let job = sim.core.repos[&repo()].job.as_ref().unwrap().id();
    sim.finish(job, 2);
    // The record names a new state; the node restarts before it arrives.
    sim.poll(record(Some(3), Some(T0_MS + 9), &[]));
    let (_, fx) = sim.restart();
    let specs = jobs(&fx);
    assert!(
        matches!(&specs[..], [(_, JobSpec::Fetch { manifest: m, previous: Some(p), .. })] if *m == manifest(3) && *p == manifest(2)),
        "{specs:?}"
    );
    assert!(fx.iter().any(|e| matches!(e, Effect::PollRecord { .. })));
    assert!(fx.iter().any(|e| matches!(e, Effect::JoinTopic { .. })));
}

#[test]
fn a_restart_with_many_repositories_starts_few_jobs() {
    let mut sim = Sim::new(4);
    let author = key(1);
    let mut rows = Vec::new();
    for n in 0..1000u32 {
        let id = rid(&format!("did:plc:owner/r{n}"));
        let statement = Statement {
            repo_id: id.to_string(),
            head: None,
            manifest: [1; 32],
            seq: 5,
            publisher: *author.public().as_bytes(),
        }
        .sign(&author);
        rows.push(RepoRow {
            config: RepoConfig::new(id, Origin::Operator, 0),
            record: None,
            held: Some(Held {
                manifest: Hash::from_bytes([1; 32]),
                head: None,
                statement,
                pack_count: 1,
                bytes: 1,
                since: 0,
                write_back_pending: false,
            }),
            bookkeeping: Bookkeeping::default(),
        });
    }
    let now = sim.now();
    let fx = sim.core.load(rows, vec![], now);
    // Start-up checks are background work: one slot stays free.
    assert_eq!(jobs(&fx).len(), 3);
    assert_eq!(sim.core.job_load(), (3, 997));
}

#[test]
fn a_lonely_topic_redials_with_backoff_and_pulls_once_per_peer() {
    let mut sim = Sim::new(4);
    let seeder = key(2);
    for n in 0..3 {
        sim.command(CoreCommand::AddRepo {
            repo_id: rid(&format!("did:plc:owner/r{n}")),
            locator: None,
            peers: vec![hint(&seeder)],
        });
    }
    sim.advance(Duration::from_secs(5));
    let fx = sim.event(Event::Timer(TimerKey::Rejoin));
    let pulls: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Pull { peer, repos } => Some((*peer, repos.len())),
            _ => None,
        })
        .collect();
    assert_eq!(pulls, vec![(seeder.public(), 3)], "one pull for all three");
    // The seeder does not answer: it is asked again only after a backoff.
    sim.event(Event::Pulled {
        peer: seeder.public(),
        ok: false,
    });
    sim.advance(Duration::from_secs(5));
    let fx = sim.event(Event::Timer(TimerKey::Rejoin));
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Pull { .. })),
        "{fx:?}"
    );
    sim.advance(Duration::from_secs(10));
    let fx = sim.event(Event::Timer(TimerKey::Rejoin));
    assert!(fx.iter().any(|e| matches!(e, Effect::Pull { .. })));
}

/// A node whose account is the repository's owner, tracking its record.
fn author_writing_back() -> Sim {
    let mut sim = Sim::new(4);
    sim.event(Event::AccountResolved {
        did: repo().did().to_string(),
    });
    sim.add(vec![], locator());
    sim
}

/// Publish `m` through the core and return the effects of the finished job.
fn publish_state(sim: &mut Sim, m: u8) -> Vec<Effect> {
    let (_, job, _) = sim.start_publish();
    sim.finish(job, m)
}

fn write_back_of(fx: &[Effect]) -> Option<(String, u64)> {
    fx.iter().find_map(|e| match e {
        Effect::WriteBack { manifest, seq, .. } => Some((manifest.clone(), *seq)),
        _ => None,
    })
}

#[test]
fn the_record_names_a_published_state_only_once_the_database_holds_it() {
    let mut sim = author_writing_back();
    publish_state(&mut sim, 2);
    // The commit of the new held state fails (a full disk): the record is
    // not written back, or a crash now would leave it naming a state this
    // node lost.
    let fx = sim.event(Event::PersistFailed {
        subjects: vec![Subject::Repo(repo())],
        error: "No space left on device".into(),
    });
    let retry = timer_at(&fx, &TimerKey::Repersist).expect("a retry");
    let fx = sim.event(Event::Timer(TimerKey::WriteBack(repo())));
    assert!(write_back_of(&fx).is_none(), "{fx:?}");

    // The rows are written again; if that commit fails too, the write-back
    // still waits.
    sim.advance(retry - sim.now().at);
    let fx = sim.event(Event::Timer(TimerKey::Repersist));
    let due = timer_at(&fx, &TimerKey::WriteBack(repo())).expect("the write-back is armed again");
    sim.event(Event::PersistFailed {
        subjects: vec![Subject::Repo(repo())],
        error: "No space left on device".into(),
    });
    sim.advance(due - sim.now().at);
    let fx = sim.event(Event::Timer(TimerKey::WriteBack(repo())));
    assert!(write_back_of(&fx).is_none(), "{fx:?}");

    // The next retry holds: the record is written back.
    sim.advance(sim.core.settings.retry_max);
    sim.event(Event::Timer(TimerKey::Repersist));
    sim.advance(crate::core::persist::WRITE_BACK_AFTER_REWRITE);
    let fx = sim.event(Event::Timer(TimerKey::WriteBack(repo())));
    let (_, seq) = write_back_of(&fx).expect("a write-back");
    assert_eq!(seq, sim.held().unwrap().seq());
}

#[test]
fn write_back_follows_a_publish_and_retries_honouring_retry_after() {
    let mut sim = author_writing_back();
    let fx = publish_state(&mut sim, 2);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::SetTimer {
            key: TimerKey::WriteBack(_),
            ..
        }
    )));
    let fx = sim.event(Event::Timer(TimerKey::WriteBack(repo())));
    let (manifest, seq) = write_back_of(&fx).expect("a write-back");
    assert_eq!(seq, sim.held().unwrap().seq());
    let fx = sim.event(Event::WrittenBack {
        repo: repo(),
        result: Err(WriteFailure {
            message: "429".into(),
            retry_after: Some(Duration::from_secs(600)),
        }),
    });
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::SetTimer { key: TimerKey::WriteBack(_), at } if *at >= sim.now().at + Duration::from_secs(600)
    )));
    sim.event(Event::Timer(TimerKey::WriteBack(repo())));
    let mut written = record(Some(2), Some(seq), &[]);
    written.manifest = Some(manifest);
    sim.event(Event::WrittenBack {
        repo: repo(),
        result: Ok(WrittenBack {
            record: written,
            superseded: false,
        }),
    });
    assert!(!sim.held().unwrap().write_back_pending);
}

#[test]
fn only_the_accounts_own_records_are_written_back() {
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    // Until the account is known nothing is written.
    let fx = publish_state(&mut sim, 2);
    assert!(write_back_of(&fx).is_none());
    let fx = sim.event(Event::Timer(TimerKey::WriteBack(repo())));
    assert!(write_back_of(&fx).is_none());
    assert!(sim.held().unwrap().write_back_pending);
    // Another account: never written, and no longer pending.
    let fx = sim.event(Event::AccountResolved {
        did: "did:plc:someoneelse".into(),
    });
    assert!(write_back_of(&fx).is_none());
    assert!(!sim.held().unwrap().write_back_pending);
    // The owner's account: written.
    let fx = sim.event(Event::AccountResolved {
        did: repo().did().to_string(),
    });
    assert!(write_back_of(&fx).is_none(), "nothing pending any more");
    let fx = publish_state(&mut sim, 3);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::SetTimer {
            key: TimerKey::WriteBack(_),
            ..
        }
    )));
    let fx = sim.event(Event::Timer(TimerKey::WriteBack(repo())));
    assert!(write_back_of(&fx).is_some());
}

#[test]
fn a_record_naming_a_newer_state_is_not_overwritten_and_is_taken() {
    let mut sim = author_writing_back();
    publish_state(&mut sim, 2);
    let fx = sim.event(Event::Timer(TimerKey::WriteBack(repo())));
    let (_, seq) = write_back_of(&fx).unwrap();
    // Another knot of the owner wrote a newer state meanwhile.
    let fx = sim.event(Event::WrittenBack {
        repo: repo(),
        result: Ok(WrittenBack {
            record: record(Some(7), Some(seq + 10), &[]),
            superseded: true,
        }),
    });
    assert!(!sim.held().unwrap().write_back_pending);
    let (_, m) = fetch_job(&fx).expect("the newer state is fetched");
    assert_eq!(m, manifest(7));
}

#[test]
fn a_neighbour_coming_up_is_asked_what_it_holds_and_greeted() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    sim.take(&author, 2, T0_MS);
    let fx = sim.event(Event::NeighborUp {
        repo: repo(),
        peer: author.public(),
        addrs: vec![],
    });
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Pull { peer, .. } if *peer == author.public()))
    );
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Announce {
            audience: Audience::Neighbors { .. },
            ..
        }
    )));
}

/// A follower adding many repositories of one peer sees it come up as a
/// neighbour on each topic at about the same time: it asks that peer in a
/// few pulls, one at a time, not one connection per repository (which the
/// peer's heads server would refuse past its rate).
#[test]
fn neighbours_coming_up_on_many_topics_are_asked_in_few_pulls() {
    let mut sim = Sim::new(4);
    let author = key(1);
    let ids = add_repos(&mut sim, &author, MAX_PULL_REPOS + 10);
    let mut sent: Vec<Vec<RepoId>> = Vec::new();
    let take = |sent: &mut Vec<Vec<RepoId>>, fx: &[Effect]| {
        for (peer, repos) in pulls(fx) {
            assert_eq!(peer, author.public());
            sent.push(repos);
        }
    };
    for id in &ids {
        let fx = sim.event(Event::NeighborUp {
            repo: id.clone(),
            peer: author.public(),
            addrs: vec![],
        });
        take(&mut sent, &fx);
    }
    // The first neighbour is asked at once; the rest wait for its answer.
    assert_eq!(sent, vec![vec![ids[0].clone()]]);
    take(&mut sent, &answered(&mut sim, author.public(), true));
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1].len(), MAX_PULL_REPOS);
    take(&mut sent, &answered(&mut sim, author.public(), true));
    let mut asked: Vec<RepoId> = sent.concat();
    asked.sort();
    let mut all = ids.clone();
    all.sort();
    assert_eq!(asked, all, "every repository asked about once");
    assert_eq!(sent.len(), 3);
}

/// A pull that fails drops what a sweep queued, but not the repositories
/// asked about for a reason of their own that it did not carry: those are
/// asked once, after the usual spacing, and not again if that fails too.
#[test]
fn a_failed_pull_keeps_the_neighbour_pulls_it_did_not_carry() {
    let mut sim = Sim::new(4);
    let author = key(1);
    let ids = add_repos(&mut sim, &author, 3);
    let author_id = author.public();
    let asked = |fx: &[Effect]| -> Vec<Vec<RepoId>> {
        pulls(fx)
            .into_iter()
            .map(|(peer, repos)| {
                assert_eq!(peer, author_id);
                repos
            })
            .collect()
    };
    let up = |sim: &mut Sim, id: &RepoId| {
        sim.event(Event::NeighborUp {
            repo: id.clone(),
            peer: author.public(),
            addrs: vec![],
        })
    };
    assert_eq!(asked(&up(&mut sim, &ids[0])), vec![vec![ids[0].clone()]]);
    assert!(asked(&up(&mut sim, &ids[1])).is_empty());
    assert!(asked(&up(&mut sim, &ids[2])).is_empty());
    let fx = sim.event(Event::Pulled {
        peer: author.public(),
        ok: false,
    });
    assert!(asked(&fx).is_empty(), "spaced: {fx:?}");
    sim.advance(Duration::from_secs(1));
    let fx = sim.event(Event::Timer(TimerKey::DeferredPulls));
    assert_eq!(asked(&fx), vec![ids[1..].to_vec()]);
    let fx = answered(&mut sim, author.public(), false);
    assert!(asked(&fx).is_empty(), "each asked once: {fx:?}");
}

/// `count` repositories added with `author` as their peer.
fn add_repos(sim: &mut Sim, author: &SecretKey, count: usize) -> Vec<RepoId> {
    let ids: Vec<RepoId> = (0..count)
        .map(|n| rid(&format!("did:plc:owner/r{n}")))
        .collect();
    for id in &ids {
        sim.command(CoreCommand::AddRepo {
            repo_id: id.clone(),
            locator: None,
            peers: vec![hint(author)],
        });
    }
    ids
}

/// `peer` answered the pull under way (or failed to); then the queues'
/// timer fires once the spacing has passed.
fn answered(sim: &mut Sim, peer: EndpointId, ok: bool) -> Vec<Effect> {
    let mut fx = sim.event(Event::Pulled { peer, ok });
    sim.advance(Duration::from_secs(1));
    fx.extend(sim.event(Event::Timer(TimerKey::DeferredPulls)));
    fx
}

/// A peer whose answer to a pull is an older state this node published (it
/// missed the announcement while gossip still counted this restarted node
/// as a neighbour) is told about the current state directly; a greeting
/// over gossip, or an older state published by someone else, is not.
#[test]
fn a_peer_behind_on_this_nodes_own_state_is_told_directly() {
    let mut sim = Sim::new(4);
    sim.add(vec![], None);
    let (_, job, _) = sim.start_publish();
    sim.finish(job, 2);
    let held = sim.held().unwrap().seq();
    let peer = key(7);
    // Over gossip (a greeting) nothing is pushed back.
    let fx = sim.announce(&key(100), &peer, 1, 1);
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Announce { .. })),
        "{fx:?}"
    );
    // In the answer to a pull it is.
    let statement = crate::announce::Statement {
        repo_id: repo().to_string(),
        head: None,
        manifest: [1; 32],
        seq: 1,
        publisher: *key(100).public().as_bytes(),
    }
    .sign(&key(100));
    let fx = sim.event(Event::Announcement {
        repo: repo(),
        announcement: Box::new(crate::announce::Announcement::new(statement, &peer, vec![])),
        via: Via::Direct,
    });
    let told = fx.iter().find_map(|e| match e {
        Effect::Announce {
            statement,
            audience: Audience::Everyone { direct },
            ..
        } => Some((statement.statement.seq, direct.clone())),
        _ => None,
    });
    assert_eq!(told, Some((held, vec![peer.public()])), "{fx:?}");

    let fx = sim.announce(&key(5), &peer, 1, 1);
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Announce { .. })),
        "{fx:?}"
    );
}

/// After fetching a state, the node tells a few peers last seen behind it
/// directly (gossip may count a restarted peer as a neighbour while nothing
/// reaches it), at most
/// [`MAX_CATCH_UP_PUSHES`](crate::core::repo::MAX_CATCH_UP_PUSHES), and the
/// peer it took the state from unless that is a gossip neighbour.
#[test]
fn peers_seen_behind_are_told_of_a_fetched_state_directly() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    sim.take(&author, 1, 1);
    let behind: Vec<SecretKey> = (10..16).map(key).collect();
    for peer in &behind {
        sim.announce(&author, peer, 1, 1);
    }
    let fx = sim.announce(&author, &author, 2, 2);
    let (job, _) = fetch_job(&fx).expect("a fetch starts");
    let fx = sim.finish(job, 2);
    let direct = fx
        .iter()
        .find_map(|e| match e {
            Effect::Announce {
                audience: Audience::Neighbors { direct },
                ..
            } => Some(direct.clone()),
            _ => None,
        })
        .expect("the new state is announced");
    let mut expected: Vec<EndpointId> = behind
        .iter()
        .rev()
        .take(crate::core::repo::MAX_CATCH_UP_PUSHES)
        .map(|k| k.public())
        .collect();
    // And the peer it came from, not a neighbour: so that it knows this
    // node holds the state, whether or not gossip ever showed it this node.
    expected.push(author.public());
    assert_eq!(direct, expected);

    // Peers that announce the state while it is being fetched are not
    // behind, and the author is a gossip neighbour now (it hears the
    // announcement there): nobody is told directly.
    sim.event(Event::NeighborUp {
        repo: repo(),
        peer: author.public(),
        addrs: vec![],
    });
    let fx = sim.announce(&author, &author, 3, 3);
    let (job, _) = fetch_job(&fx).expect("a fetch starts");
    for peer in &behind {
        sim.announce(&author, peer, 3, 3);
    }
    let fx = sim.finish(job, 3);
    assert!(
        fx.iter().any(|e| matches!(
            e,
            Effect::Announce { audience: Audience::Neighbors { direct }, .. } if direct.is_empty()
        )),
        "{fx:?}"
    );
}
