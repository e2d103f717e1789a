//! `disk::identify`, table-driven: recorded identities against the disks present, as
//! the recovery console meets them (healthy, unreadable, missing, replaced, look-alike
//! disks, USB sticks).

use understudy::disk::{
    self, Bytes, Candidate, Disk, Identity, Inventory, LvmStatus, MatchedBy, PrimaryStatus,
    Readability, Recorded, Role, SecondaryStatus, Transport,
};

const GIB: u64 = 1 << 30;

/// A disk as the inventory would report it. `id` is `wwn/serial/model`, empty parts
/// absent.
fn disk(name: &str, id: &str, gib: u64, state: Readability, transport: Transport) -> Disk {
    let part = |i: usize| {
        id.split('/')
            .nth(i)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let identity = Identity {
        wwn: part(0),
        serial: part(1),
        model: part(2),
        size: Bytes(gib * GIB),
        logical_sector: Bytes(512),
    };
    Disk::known_as(name, identity, transport, state)
}

fn ok(name: &str, id: &str, gib: u64) -> Disk {
    disk(name, id, gib, Readability::Readable, Transport::Sata)
}

fn id(id: &str, gib: u64) -> Option<Identity> {
    Some(ok("x", id, gib).identity)
}

fn inv(disks: Vec<Disk>) -> Inventory {
    Inventory {
        disks,
        lvm: LvmStatus::Skipped,
        mounts: Vec::new(),
        swaps: Vec::new(),
        problems: Vec::new(),
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

struct Case {
    what: &'static str,
    disks: Vec<Disk>,
    recorded: Recorded,
    primary: PrimaryStatus,
    secondary: SecondaryStatus,
    roles: Vec<(Role, Option<MatchedBy>)>,
}

#[test]
fn roles() {
    let rec = |p: Option<Identity>, s: Option<Identity>| Recorded {
        primary: p,
        secondary: s,
    };
    let both = || rec(id("0x5000a/SA/ST1000", 1000), id("0x5000b/SB/ST1000", 1000));
    let eio = Readability::IoError(s("Input/output error (os error 5)"));
    let cases = vec![
        Case {
            what: "healthy primary, secondary, and a USB stick",
            disks: vec![
                ok("sda", "0x5000a/SA/ST1000", 1000),
                ok("sdb", "0x5000b/SB/ST1000", 1000),
                disk(
                    "sdc",
                    "/4C53/Cruzer",
                    16,
                    Readability::Readable,
                    Transport::Usb,
                ),
            ],
            recorded: both(),
            primary: PrimaryStatus::Healthy { disk: s("sda") },
            secondary: SecondaryStatus::Present { disk: s("sdb") },
            roles: vec![
                (Role::Primary, Some(MatchedBy::Wwn)),
                (Role::Secondary, Some(MatchedBy::Wwn)),
                (Role::Removable, None),
            ],
        },
        Case {
            what: "disks renamed across boots are still recognised",
            disks: vec![
                ok("sda", "0x5000b/SB/ST1000", 1000),
                ok("sdb", "0x5000a/SA/ST1000", 1000),
            ],
            recorded: both(),
            primary: PrimaryStatus::Healthy { disk: s("sdb") },
            secondary: SecondaryStatus::Present { disk: s("sda") },
            roles: vec![
                (Role::Secondary, Some(MatchedBy::Wwn)),
                (Role::Primary, Some(MatchedBy::Wwn)),
            ],
        },
        Case {
            what: "primary pulled, a blank replacement in its place",
            disks: vec![
                disk(
                    "sda",
                    "0x5000c/SC/WD10",
                    2000,
                    Readability::Blank,
                    Transport::Sata,
                ),
                ok("sdb", "0x5000b/SB/ST1000", 1000),
            ],
            recorded: both(),
            primary: PrimaryStatus::Missing,
            secondary: SecondaryStatus::Present { disk: s("sdb") },
            roles: vec![
                (Role::Replacement(Candidate::Blank), None),
                (Role::Secondary, Some(MatchedBy::Wwn)),
            ],
        },
        Case {
            what: "primary present but it returns I/O errors",
            disks: vec![
                disk(
                    "sda",
                    "0x5000a/SA/ST1000",
                    1000,
                    eio.clone(),
                    Transport::Sata,
                ),
                ok("sdb", "0x5000b/SB/ST1000", 1000),
            ],
            recorded: both(),
            primary: PrimaryStatus::Unreadable {
                disk: s("sda"),
                reason: eio.clone(),
            },
            secondary: SecondaryStatus::Present { disk: s("sdb") },
            roles: vec![
                (Role::Primary, Some(MatchedBy::Wwn)),
                (Role::Secondary, Some(MatchedBy::Wwn)),
            ],
        },
        Case {
            what: "primary present without its partition table",
            disks: vec![disk(
                "sda",
                "0x5000a/SA/ST1000",
                1000,
                Readability::NoPartitionTable,
                Transport::Sata,
            )],
            recorded: both(),
            primary: PrimaryStatus::Unreadable {
                disk: s("sda"),
                reason: Readability::NoPartitionTable,
            },
            secondary: SecondaryStatus::Missing,
            roles: vec![(Role::Primary, Some(MatchedBy::Wwn))],
        },
        Case {
            what: "primary with a bad superblock",
            disks: vec![disk(
                "sda",
                "0x5000a/SA/ST1000",
                1000,
                Readability::BadSuperblock(s("ext4 on partition 2")),
                Transport::Sata,
            )],
            recorded: both(),
            primary: PrimaryStatus::Unreadable {
                disk: s("sda"),
                reason: Readability::BadSuperblock(s("ext4 on partition 2")),
            },
            secondary: SecondaryStatus::Missing,
            roles: vec![(Role::Primary, Some(MatchedBy::Wwn))],
        },
        Case {
            what: "a used disk from elsewhere, and an unreadable one, are candidates",
            disks: vec![
                ok("sda", "0x5000d/SD/ST1000", 1000),
                disk(
                    "sdc",
                    "0x5000e/SE/ST1000",
                    1000,
                    eio.clone(),
                    Transport::Sata,
                ),
                ok("sdb", "0x5000b/SB/ST1000", 1000),
            ],
            recorded: both(),
            primary: PrimaryStatus::Missing,
            secondary: SecondaryStatus::Present { disk: s("sdb") },
            roles: vec![
                (Role::Replacement(Candidate::Foreign), None),
                (Role::Replacement(Candidate::Unreadable(eio.clone())), None),
                (Role::Secondary, Some(MatchedBy::Wwn)),
            ],
        },
        Case {
            what: "same serial but another WWN is another disk",
            disks: vec![ok("sda", "0x5000f/SA/ST1000", 1000)],
            recorded: both(),
            primary: PrimaryStatus::Missing,
            secondary: SecondaryStatus::Missing,
            roles: vec![(Role::Replacement(Candidate::Foreign), None)],
        },
        Case {
            what: "serial numbers decide when there is no WWN (virtio)",
            disks: vec![ok("vda", "/PRIMARY-1/", 20), ok("vdb", "/SECONDARY-1/", 20)],
            recorded: rec(id("/PRIMARY-1/", 20), id("/SECONDARY-1/", 20)),
            primary: PrimaryStatus::Healthy { disk: s("vda") },
            secondary: SecondaryStatus::Present { disk: s("vdb") },
            roles: vec![
                (Role::Primary, Some(MatchedBy::Serial)),
                (Role::Secondary, Some(MatchedBy::Serial)),
            ],
        },
        Case {
            what: "same serial, another model: not the same disk",
            disks: vec![ok("sda", "/SA/WD10", 1000)],
            recorded: rec(id("/SA/ST1000", 1000), None),
            primary: PrimaryStatus::Missing,
            secondary: SecondaryStatus::NotRecorded,
            roles: vec![(Role::Replacement(Candidate::Foreign), None)],
        },
        Case {
            what: "model and size only, when nothing better was recorded",
            disks: vec![ok("vda", "//QEMU", 20), ok("vdb", "//QEMU", 40)],
            recorded: rec(id("//QEMU", 20), id("//QEMU", 40)),
            primary: PrimaryStatus::Healthy { disk: s("vda") },
            secondary: SecondaryStatus::Present { disk: s("vdb") },
            roles: vec![
                (Role::Primary, Some(MatchedBy::ModelAndSize)),
                (Role::Secondary, Some(MatchedBy::ModelAndSize)),
            ],
        },
        Case {
            what: "two look-alike disks: never guess",
            disks: vec![ok("vda", "//QEMU", 20), ok("vdb", "//QEMU", 20)],
            recorded: rec(id("//QEMU", 20), id("//QEMU", 20)),
            primary: PrimaryStatus::Ambiguous {
                disks: vec![s("vda"), s("vdb")],
            },
            secondary: SecondaryStatus::Ambiguous {
                disks: vec![s("vda"), s("vdb")],
            },
            roles: vec![
                (Role::Ambiguous, Some(MatchedBy::ModelAndSize)),
                (Role::Ambiguous, Some(MatchedBy::ModelAndSize)),
            ],
        },
        Case {
            what: "one disk matching both records",
            disks: vec![ok("vda", "//QEMU", 20)],
            recorded: rec(id("//QEMU", 20), id("//QEMU", 20)),
            primary: PrimaryStatus::Ambiguous {
                disks: vec![s("vda")],
            },
            secondary: SecondaryStatus::Ambiguous {
                disks: vec![s("vda")],
            },
            roles: vec![(Role::Ambiguous, Some(MatchedBy::ModelAndSize))],
        },
        Case {
            what: "a stronger match wins over look-alikes",
            disks: vec![ok("sda", "/SA/ST1000", 1000), ok("sdb", "//ST1000", 1000)],
            recorded: rec(id("/SA/ST1000", 1000), None),
            primary: PrimaryStatus::Healthy { disk: s("sda") },
            secondary: SecondaryStatus::NotRecorded,
            roles: vec![
                (Role::Primary, Some(MatchedBy::Serial)),
                (Role::Replacement(Candidate::Foreign), None),
            ],
        },
        Case {
            what: "a recorded disk on USB is still itself",
            disks: vec![disk(
                "sdc",
                "0x5000a/SA/ST1000",
                1000,
                Readability::Readable,
                Transport::Usb,
            )],
            recorded: both(),
            primary: PrimaryStatus::Healthy { disk: s("sdc") },
            secondary: SecondaryStatus::Missing,
            roles: vec![(Role::Primary, Some(MatchedBy::Wwn))],
        },
        Case {
            what: "nothing recorded yet (before provision)",
            disks: vec![
                ok("sda", "0x5000a/SA/ST1000", 1000),
                disk("sdb", "", 1000, Readability::NoMedium, Transport::Sata),
            ],
            recorded: Recorded::default(),
            primary: PrimaryStatus::NotRecorded,
            secondary: SecondaryStatus::NotRecorded,
            roles: vec![
                (Role::Replacement(Candidate::Foreign), None),
                (
                    Role::Replacement(Candidate::Unreadable(Readability::NoMedium)),
                    None,
                ),
            ],
        },
        Case {
            what: "no disks at all",
            disks: vec![],
            recorded: both(),
            primary: PrimaryStatus::Missing,
            secondary: SecondaryStatus::Missing,
            roles: vec![],
        },
    ];

    for c in cases {
        let inventory = inv(c.disks);
        let got = disk::identify(&inventory, &c.recorded);
        assert_eq!(got.primary, c.primary, "{}: primary", c.what);
        assert_eq!(got.secondary, c.secondary, "{}: secondary", c.what);
        let roles: Vec<(Role, Option<MatchedBy>)> = got
            .disks
            .iter()
            .map(|r| (r.role.clone(), r.matched_by))
            .collect();
        assert_eq!(roles, c.roles, "{}: roles", c.what);
        for (r, d) in got.disks.iter().zip(&inventory.disks) {
            assert_eq!((&r.disk, &r.path), (&d.name, &d.path), "{}", c.what);
        }
    }
}

#[test]
fn recorded_identities_round_trip_through_json() {
    let rec = Recorded {
        primary: id("0x5000a/SA/ST1000", 1000),
        secondary: id("/SB/", 20),
    };
    let text = serde_json::to_string(&rec).unwrap();
    assert_eq!(serde_json::from_str::<Recorded>(&text).unwrap(), rec);
    assert!(text.contains(r#""wwn":"0x5000a""#), "{text}");
}

#[test]
fn statuses_serialize_for_the_console() {
    let v = serde_json::to_value(PrimaryStatus::Unreadable {
        disk: s("sda"),
        reason: Readability::NoPartitionTable,
    })
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"status":"unreadable","disk":"sda","reason":{"state":"no_partition_table"}})
    );
    let v = serde_json::to_value(Role::Replacement(Candidate::Blank)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"role":"replacement","detail":"blank"})
    );
}
