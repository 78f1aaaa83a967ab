//! One consistent, invented population and every department's source data about it:
//! households in the household register, ID cards for everyone 16 and over, residence
//! permits for households living away from their registration, two marriage
//! certificates per married couple, birth certificates and student status for their
//! children, social insurance and income tax for workers, business licences and VAT for
//! owners. Each department's rows use its own column names and codes (the connectors'
//! mappings translate them); every identifier carries a valid check character; the
//! same seed gives the same files.

use crate::sample::{Generator, BIRTH_COLUMNS, DISTRICTS, GIVEN, HOSPITALS, SURNAMES};
use datarun_domain::date::CivilDate;
use datarun_domain::{CertificateId, CreditCode, ResidentId};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// The date the population is "as of": every date in it is on or before it.
pub const AS_OF: CivilDate = CivilDate {
    year: 2026,
    month: 6,
    day: 30,
};

/// How a source file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

/// One department's source file for one record type.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub record_type: &'static str,
    /// Relative to the output folder; each connector's `source.path` names it.
    pub path: &'static str,
    pub format: Format,
    pub columns: &'static [&'static str],
    pub rows: Vec<BTreeMap<String, String>>,
}

/// Every source file of the reference world, in a fixed order.
#[derive(Debug, Clone)]
pub struct Population {
    pub people: usize,
    pub files: Vec<SourceFile>,
}

const ID_CARD_COLUMNS: &[&str] = &[
    "ZJBH", "GMSFHM", "XM", "XB", "MZ", "CSRQ", "ZZ", "QFJG", "YXQQSRQ", "YXQJZRQ", "QFRQ", "GXSJ",
];
const HOUSEHOLD_COLUMNS: &[&str] = &[
    "ZJBH", "HH", "HLX", "GMSFHM", "XM", "YHZGX", "HZSFHM", "HZXM", "JHRSFHM", "ZZ", "DJJG",
    "DJRQ", "QFRQ", "GXSJ",
];
const PERMIT_COLUMNS: &[&str] = &[
    "ZJBH", "GMSFHM", "XM", "JZDZ", "HJD", "QFJG", "YXQQ", "YXQZ", "QFRQ", "GXSJ",
];
const MARRIAGE_COLUMNS: &[&str] = &[
    "cert_no",
    "reg_no",
    "holder_id",
    "holder_name",
    "spouse_id",
    "spouse_name",
    "reg_date",
    "reg_office",
    "issue_date",
    "updated_at",
];
const INSURANCE_COLUMNS: &[&str] = &[
    "proof_no",
    "aac002",
    "aac003",
    "aab004",
    "employer_uscc",
    "pension",
    "medical",
    "unemployment",
    "injury",
    "start_date",
    "months",
    "base_fen",
    "status",
    "issue_date",
    "updated_at",
];
const LICENCE_COLUMNS: &[&str] = &[
    "licence_no",
    "uscc",
    "entname",
    "enttype",
    "lerep",
    "lerep_id",
    "regcap_fen",
    "estdate",
    "opscope",
    "dom",
    "regorg",
    "issue_date",
    "updated_at",
];
const TAX_COLUMNS: &[&str] = &[
    "wszm_no",
    "nsrsbh",
    "nsrmc",
    "sz",
    "skssqq",
    "skssqz",
    "sjse_fen",
    "swjg",
    "kjrq",
    "updated_at",
];
const STUDENT_COLUMNS: &[&str] = &[
    "xj_no",
    "sfzh",
    "xm",
    "xxmc",
    "xd",
    "nj",
    "rxrq",
    "xjzt",
    "jhr_sfzh",
    "issue_date",
    "updated_at",
];

const ETHNICITIES: [&str; 6] = ["汉", "汉", "汉", "壮", "瑶", "畲"];
const STREETS: [&str; 8] = [
    "中山路",
    "解放路",
    "人民路",
    "环市东路",
    "天河北路",
    "深南大道",
    "滨江路",
    "新港西路",
];
const TRADES: [(&str, &str); 5] = [
    ("贸易", "日用百货、五金交电销售"),
    ("科技", "软件开发；信息技术咨询服务"),
    ("餐饮", "餐饮服务；食品销售"),
    ("物流", "普通货物道路运输；仓储服务"),
    ("建材", "建筑材料销售；装饰装修"),
];
const SCHOOLS: [&str; 3] = ["第一小学", "第二中学", "实验中学"];

#[derive(Debug, Clone)]
struct Person {
    id: String,
    name: String,
    male: bool,
    birth: CivilDate,
}

impl Person {
    fn age(&self) -> i32 {
        self.birth.years_until(AS_OF)
    }
}

fn days(date: CivilDate, offset: i64) -> CivilDate {
    CivilDate::from_days_since_epoch(date.days_since_epoch() + offset)
}

fn years_after(date: CivilDate, years: i32) -> CivilDate {
    let day = date.day.min(datarun_domain::date::days_in_month(
        date.year + years,
        date.month,
    ));
    CivilDate {
        year: date.year + years,
        month: date.month,
        day,
    }
}

fn min_date(a: CivilDate, b: CivilDate) -> CivilDate {
    if a < b {
        a
    } else {
        b
    }
}

/// The row's last change in the departments' `YYYY-MM-DD HH:MM:SS` (UTC+8).
fn changed(generator: &mut Generator, date: CivilDate) -> String {
    format!(
        "{date} {:02}:{:02}:{:02}",
        8 + generator.below(10),
        generator.below(60),
        generator.below(60)
    )
}

fn row(pairs: Vec<(&str, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Assigns certificate ids: one serial counter per certificate type.
#[derive(Default)]
struct Serials(BTreeMap<&'static str, u32>);

impl Serials {
    fn next(&mut self, type_code: &'static str, division: &str, year: i32) -> String {
        let serial = self.0.entry(type_code).or_insert(0);
        *serial += 1;
        let city = format!("{}00", &division[..4]);
        CertificateId::build(type_code, &city, year, *serial)
            .map(|id| id.to_string())
            .unwrap_or_default()
    }
}

struct World {
    generator: Generator,
    used_ids: HashSet<String>,
    serials: Serials,
    households: u32,
    businesses: u32,
}

impl World {
    fn person(&mut self, division: &str, birth: CivilDate, male: bool, surname: &str) -> Person {
        loop {
            // The 17th digit is odd for men and even for women.
            let sequence = self.generator.below(500) * 2 + u64::from(male);
            let body = format!(
                "{division}{:04}{:02}{:02}{:03}",
                birth.year, birth.month, birth.day, sequence
            );
            let id = format!("{body}{}", ResidentId::check_character(&body));
            if self.used_ids.insert(id.clone()) {
                let given = self.generator.pick(&GIVEN);
                return Person {
                    id,
                    name: format!("{surname}{given}"),
                    male,
                    birth,
                };
            }
        }
    }

    fn birth_between(&mut self, youngest: i32, oldest: i32) -> CivilDate {
        let from = years_after(AS_OF, -oldest - 1);
        let to = years_after(AS_OF, -youngest);
        self.generator.date_between(days(from, 1), to)
    }
}

/// Generates `people` people (whole households, so a few more) from `seed`.
pub fn generate(people: usize, seed: u64) -> Population {
    let mut world = World {
        generator: Generator(seed),
        used_ids: HashSet::new(),
        serials: Serials::default(),
        households: 0,
        businesses: 0,
    };
    let mut files: BTreeMap<&'static str, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    let mut count = 0;
    // Employers: the population's own businesses, plus one large employer per district.
    let mut employers: Vec<(String, String)> = Vec::new();
    while count < people {
        let household = household(&mut world, &mut files, &mut employers);
        count += household;
    }
    let sources: [(&str, &str, Format, &[&str]); 9] = [
        (
            "public_security.resident_id_card",
            "sample/resident_id_cards.jsonl",
            Format::JsonLines,
            ID_CARD_COLUMNS,
        ),
        (
            "public_security.household_register",
            "sample/household_register.jsonl",
            Format::JsonLines,
            HOUSEHOLD_COLUMNS,
        ),
        (
            "public_security.residence_permit",
            "sample/residence_permits.jsonl",
            Format::JsonLines,
            PERMIT_COLUMNS,
        ),
        (
            "civil_affairs.marriage_certificate",
            "sample/marriage_certificates.csv",
            Format::Csv,
            MARRIAGE_COLUMNS,
        ),
        (
            "health.birth_certificate",
            "sample/birth_certificates.csv",
            Format::Csv,
            &BIRTH_COLUMNS,
        ),
        (
            "human_resources.social_insurance_enrolment",
            "sample/social_insurance.csv",
            Format::Csv,
            INSURANCE_COLUMNS,
        ),
        (
            "market_regulation.business_licence",
            "sample/business_licences.csv",
            Format::Csv,
            LICENCE_COLUMNS,
        ),
        (
            "tax.tax_payment_certificate",
            "sample/tax_payment_certificates.jsonl",
            Format::JsonLines,
            TAX_COLUMNS,
        ),
        (
            "education.student_status",
            "sample/student_status.csv",
            Format::Csv,
            STUDENT_COLUMNS,
        ),
    ];
    Population {
        people: count,
        files: sources
            .into_iter()
            .map(|(record_type, path, format, columns)| SourceFile {
                record_type,
                path,
                format,
                columns,
                rows: files.remove(record_type).unwrap_or_default(),
            })
            .collect(),
    }
}

/// One household and every record about its members; returns how many members.
fn household(
    world: &mut World,
    files: &mut BTreeMap<&'static str, Vec<BTreeMap<String, String>>>,
    employers: &mut Vec<(String, String)>,
) -> usize {
    world.households += 1;
    let (division, place) = DISTRICTS[world.generator.below(DISTRICTS.len() as u64) as usize];
    let surname = world.generator.pick(&SURNAMES);
    let head_male = world.generator.below(2) == 0;
    let head_birth = world.birth_between(25, 60);
    let head = world.person(division, head_birth, head_male, surname);
    let married = world.generator.below(4) != 0;
    let spouse = married.then(|| {
        let birth = days(head_birth, world.generator.below(6 * 365) as i64 - 3 * 365);
        let spouse_surname = world.generator.pick(&SURNAMES);
        world.person(
            division,
            min_date(birth, years_after(AS_OF, -22)),
            !head_male,
            spouse_surname,
        )
    });
    let address = format!(
        "{place}{}{}号",
        world.generator.pick(&STREETS),
        1 + world.generator.below(300)
    );
    let station = format!("{place}公安分局{}派出所", world.generator.pick(&STREETS));
    // Married when the younger spouse was 22 to 30, and not after the as-of date.
    let wedding = spouse.as_ref().map(|spouse| {
        let younger = if spouse.birth > head.birth {
            spouse.birth
        } else {
            head.birth
        };
        min_date(
            years_after(younger, 22 + world.generator.below(9) as i32),
            days(AS_OF, -30),
        )
    });
    let mut children = Vec::new();
    if let Some(wedding) = wedding {
        let first = days(wedding, 300);
        for _ in 0..world.generator.below(4) {
            let earliest = if first > years_after(AS_OF, -17) {
                first
            } else {
                years_after(AS_OF, -17)
            };
            if earliest >= days(AS_OF, -10) {
                break;
            }
            let birth = world.generator.date_between(earliest, days(AS_OF, -10));
            let male = world.generator.below(2) == 0;
            children.push(world.person(division, birth, male, surname));
        }
    }
    let elder = (world.generator.below(10) == 0).then(|| {
        let birth = world.birth_between(65, 85);
        let male = world.generator.below(2) == 0;
        world.person(division, birth, male, surname)
    });
    let (mother, father) = match &spouse {
        Some(spouse) if head.male => (Some(spouse.clone()), Some(head.clone())),
        Some(spouse) => (Some(head.clone()), Some(spouse.clone())),
        None => (None, None),
    };
    let guardian = mother.clone().unwrap_or_else(|| head.clone());

    // The household register: one card per member.
    let household_number = format!("{}{:06}", &division[2..6], world.households);
    let mut members: Vec<(&Person, &str)> = vec![(&head, "户主")];
    if let Some(spouse) = &spouse {
        members.push((spouse, "配偶"));
    }
    for child in &children {
        members.push((child, "子女"));
    }
    if let Some(elder) = &elder {
        members.push((elder, "父母"));
    }
    for (member, relation) in &members {
        let registered = if *relation == "子女" {
            days(member.birth, 20 + world.generator.below(30) as i64)
        } else {
            min_date(
                years_after(member.birth, 16 + world.generator.below(10) as i32),
                AS_OF,
            )
        };
        let issue = days(AS_OF, -(world.generator.below(300) as i64));
        let minor = member.age() < 18;
        let id = world.serials.next("HKDJ", division, issue.year);
        let updated = changed(&mut world.generator, issue);
        files
            .entry("public_security.household_register")
            .or_default()
            .push(row(vec![
                ("ZJBH", id),
                ("HH", household_number.clone()),
                ("HLX", "家庭户".into()),
                ("GMSFHM", member.id.clone()),
                ("XM", member.name.clone()),
                ("YHZGX", (*relation).into()),
                ("HZSFHM", head.id.clone()),
                ("HZXM", head.name.clone()),
                (
                    "JHRSFHM",
                    if minor {
                        guardian.id.clone()
                    } else {
                        String::new()
                    },
                ),
                ("ZZ", address.clone()),
                ("DJJG", station.clone()),
                ("DJRQ", registered.to_string()),
                ("QFRQ", issue.to_string()),
                ("GXSJ", updated),
            ]));
    }

    // ID cards for everyone 16 and over; residence permits when living elsewhere.
    let elsewhere = world.generator.below(6) == 0;
    let (home_division, home_place) =
        DISTRICTS[world.generator.below(DISTRICTS.len() as u64) as usize];
    for (member, _) in &members {
        let age = member.age();
        if age < 16 {
            continue;
        }
        let validity = match age {
            16..=25 => Some(10),
            26..=45 => Some(20),
            _ => None,
        };
        let span = validity.unwrap_or(20) as u64;
        let sixteen = years_after(member.birth, 16);
        let mut from = days(AS_OF, -(world.generator.below(span * 365) as i64));
        if from < sixteen {
            from = sixteen;
        }
        let id = world.serials.next("JMSF", division, from.year);
        let updated = changed(&mut world.generator, from);
        let ethnicity = world.generator.pick(&ETHNICITIES);
        files
            .entry("public_security.resident_id_card")
            .or_default()
            .push(row(vec![
                ("ZJBH", id),
                ("GMSFHM", member.id.clone()),
                ("XM", member.name.clone()),
                ("XB", if member.male { "男" } else { "女" }.into()),
                ("MZ", ethnicity.into()),
                ("CSRQ", member.birth.to_string()),
                ("ZZ", address.clone()),
                ("QFJG", station.clone()),
                ("YXQQSRQ", from.to_string()),
                (
                    "YXQJZRQ",
                    validity
                        .map(|years| years_after(from, years).to_string())
                        .unwrap_or_default(),
                ),
                ("QFRQ", from.to_string()),
                ("GXSJ", updated),
            ]));
        if elsewhere && home_division != division {
            let from = days(AS_OF, -(world.generator.below(300) as i64));
            let id = world.serials.next("JZZM", home_division, from.year);
            let updated = changed(&mut world.generator, from);
            files
                .entry("public_security.residence_permit")
                .or_default()
                .push(row(vec![
                    ("ZJBH", id),
                    ("GMSFHM", member.id.clone()),
                    ("XM", member.name.clone()),
                    (
                        "JZDZ",
                        format!(
                            "{home_place}{}{}号",
                            world.generator.pick(&STREETS),
                            1 + world.generator.below(300)
                        ),
                    ),
                    ("HJD", place.into()),
                    ("QFJG", format!("{home_place}公安分局")),
                    ("YXQQ", from.to_string()),
                    ("YXQZ", years_after(from, 1).to_string()),
                    ("QFRQ", from.to_string()),
                    ("GXSJ", updated),
                ]));
        }
    }

    // Marriage: one certificate per spouse under one registration number.
    if let (Some(spouse), Some(wedding)) = (&spouse, wedding) {
        let registration = format!("J{division}-{}-{:06}", wedding.year, world.households);
        let office = format!("{place}民政局婚姻登记处");
        for (holder, other) in [(&head, spouse), (spouse, &head)] {
            let id = world.serials.next("JHZM", division, wedding.year);
            let updated = changed(&mut world.generator, wedding);
            files
                .entry("civil_affairs.marriage_certificate")
                .or_default()
                .push(row(vec![
                    ("cert_no", id),
                    ("reg_no", registration.clone()),
                    ("holder_id", holder.id.clone()),
                    ("holder_name", holder.name.clone()),
                    ("spouse_id", other.id.clone()),
                    ("spouse_name", other.name.clone()),
                    ("reg_date", wedding.to_string()),
                    ("reg_office", office.clone()),
                    ("issue_date", wedding.to_string()),
                    ("updated_at", updated),
                ]));
        }
    }

    // Children: a birth certificate each, and student status from age 6.
    for child in &children {
        let issue = min_date(
            days(child.birth, 1 + world.generator.below(20) as i64),
            AS_OF,
        );
        let id = world.serials.next("CSZM", division, issue.year);
        let updated = changed(&mut world.generator, issue);
        let weight = 2500 + world.generator.below(1800);
        let hospital = world.generator.pick(&HOSPITALS);
        files
            .entry("health.birth_certificate")
            .or_default()
            .push(row(vec![
                ("cert_no", id),
                ("baby_name", child.name.clone()),
                ("baby_sex", if child.male { "男" } else { "女" }.into()),
                ("baby_id_no", child.id.clone()),
                ("birth_date", child.birth.to_string()),
                ("birth_place", place.into()),
                ("weight_g", weight.to_string()),
                ("hospital", hospital.into()),
                (
                    "mother_name",
                    mother.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
                ),
                (
                    "mother_id_no",
                    mother.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
                ),
                (
                    "father_name",
                    father.as_ref().map(|f| f.name.clone()).unwrap_or_default(),
                ),
                (
                    "father_id_no",
                    father.as_ref().map(|f| f.id.clone()).unwrap_or_default(),
                ),
                ("issue_date", issue.to_string()),
                ("updated_at", updated),
            ]));
        let age = child.age();
        let (level, grade, school_age) = match age {
            6..=11 => ("小学", age - 5, 6),
            12..=14 => ("初中", age - 11, 12),
            15..=17 => ("高中", age - 14, 15),
            _ => continue,
        };
        let enrolled = CivilDate {
            year: child.birth.year + school_age + i32::from(child.birth.month >= 9),
            month: 9,
            day: 1,
        };
        let enrolled = min_date(enrolled, AS_OF);
        let issue = days(AS_OF, -(world.generator.below(60) as i64));
        let id = world.serials.next("XJZM", division, issue.year);
        let updated = changed(&mut world.generator, issue);
        let school = format!("{place}{}", world.generator.pick(&SCHOOLS));
        files
            .entry("education.student_status")
            .or_default()
            .push(row(vec![
                ("xj_no", id),
                ("sfzh", child.id.clone()),
                ("xm", child.name.clone()),
                ("xxmc", school),
                ("xd", level.into()),
                ("nj", grade.to_string()),
                ("rxrq", enrolled.to_string()),
                ("xjzt", "在读".into()),
                ("jhr_sfzh", guardian.id.clone()),
                ("issue_date", issue.to_string()),
                ("updated_at", updated),
            ]));
    }

    // Adults: some own a business (licence and VAT); workers are insured and pay income tax.
    let adults: Vec<&Person> = members
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| (18..60).contains(&p.age()))
        .collect();
    for adult in &adults {
        if world.generator.below(12) == 0 {
            business(world, files, employers, adult, division, place);
        }
    }
    if employers.is_empty() {
        if let Some(owner) = adults.first() {
            business(world, files, employers, owner, division, place);
        }
    }
    for adult in adults {
        if world.generator.below(5) == 0 || employers.is_empty() {
            continue;
        }
        let (employer_code, employer_name) =
            employers[world.generator.below(employers.len() as u64) as usize].clone();
        let working_since = years_after(adult.birth, 18 + world.generator.below(6) as i32);
        let enrolled = min_date(working_since, days(AS_OF, -60));
        let months = (AS_OF.days_since_epoch() - enrolled.days_since_epoch()) / 30;
        let base_yuan = 3_000 + world.generator.below(27_000);
        let issue = days(AS_OF, -(world.generator.below(30) as i64));
        let id = world.serials.next("CBZM", division, issue.year);
        let updated = changed(&mut world.generator, issue);
        files
            .entry("human_resources.social_insurance_enrolment")
            .or_default()
            .push(row(vec![
                ("proof_no", id),
                ("aac002", adult.id.clone()),
                ("aac003", adult.name.clone()),
                ("aab004", employer_name),
                ("employer_uscc", employer_code),
                ("pension", "是".into()),
                ("medical", "是".into()),
                (
                    "unemployment",
                    if world.generator.below(10) == 0 {
                        "否"
                    } else {
                        "是"
                    }
                    .into(),
                ),
                ("injury", "是".into()),
                ("start_date", enrolled.to_string()),
                ("months", months.to_string()),
                ("base_fen", (base_yuan * 100).to_string()),
                ("status", "参保缴费".into()),
                ("issue_date", issue.to_string()),
                ("updated_at", updated),
            ]));
        // Income tax for last year, when the income is above the threshold.
        if base_yuan > 5_000 {
            let taxable = (base_yuan - 5_000) * 12;
            let tax_fen = taxable * 100 * (3 + world.generator.below(8)) / 100;
            tax_certificate(
                world,
                files,
                &adult.id,
                &adult.name,
                "个人所得税",
                tax_fen,
                division,
                place,
            );
        }
    }
    members.len()
}

fn business(
    world: &mut World,
    files: &mut BTreeMap<&'static str, Vec<BTreeMap<String, String>>>,
    employers: &mut Vec<(String, String)>,
    owner: &Person,
    division: &str,
    place: &str,
) {
    world.businesses += 1;
    let organisation = format!(
        "{:08}",
        10_000_000 + u64::from(world.businesses) * 7_919 % 89_999_999
    );
    let Ok(code) = CreditCode::build("91", division, &organisation) else {
        return;
    };
    let (trade, scope) = TRADES[world.generator.below(TRADES.len() as u64) as usize];
    let individual = world.generator.below(4) == 0;
    // 广东省广州市天河区 → 广州市: a business is named after its city.
    let within = place.split_once('省').map_or(place, |(_, rest)| rest);
    let city = &within[..within
        .find('市')
        .map_or(within.len(), |i| i + '市'.len_utf8())];
    let (kind, name, capital) = if individual {
        (
            "个体工商户",
            format!("{city}{}{trade}店", owner.name),
            String::new(),
        )
    } else {
        (
            "有限责任公司",
            format!(
                "{city}{}{trade}有限公司",
                owner.name.chars().take(2).collect::<String>()
            ),
            ((10 + world.generator.below(490)) * 10_000 * 100).to_string(),
        )
    };
    let established = min_date(
        years_after(owner.birth, 22 + world.generator.below(15) as i32),
        days(AS_OF, -90),
    );
    let issue = days(AS_OF, -(world.generator.below(200) as i64));
    let id = world.serials.next("YYZZ", division, issue.year);
    let updated = changed(&mut world.generator, issue);
    files
        .entry("market_regulation.business_licence")
        .or_default()
        .push(row(vec![
            ("licence_no", id),
            ("uscc", code.as_str().to_owned()),
            ("entname", name.clone()),
            ("enttype", kind.into()),
            ("lerep", owner.name.clone()),
            ("lerep_id", owner.id.clone()),
            ("regcap_fen", capital),
            ("estdate", established.to_string()),
            ("opscope", scope.into()),
            (
                "dom",
                format!(
                    "{place}{}{}号",
                    world.generator.pick(&STREETS),
                    1 + world.generator.below(300)
                ),
            ),
            ("regorg", format!("{place}市场监督管理局")),
            ("issue_date", issue.to_string()),
            ("updated_at", updated),
        ]));
    let vat_fen = (1_000 + world.generator.below(200_000)) * 100;
    tax_certificate(
        world,
        files,
        code.as_str(),
        &name,
        "增值税",
        vat_fen,
        division,
        place,
    );
    if !individual {
        employers.push((code.as_str().to_owned(), name));
    }
}

#[allow(clippy::too_many_arguments)]
fn tax_certificate(
    world: &mut World,
    files: &mut BTreeMap<&'static str, Vec<BTreeMap<String, String>>>,
    taxpayer: &str,
    name: &str,
    tax: &str,
    amount_fen: u64,
    division: &str,
    place: &str,
) {
    let issue = days(AS_OF, -(world.generator.below(150) as i64));
    let id = world.serials.next("WSZM", division, issue.year);
    let updated = changed(&mut world.generator, issue);
    files
        .entry("tax.tax_payment_certificate")
        .or_default()
        .push(row(vec![
            ("wszm_no", id),
            ("nsrsbh", taxpayer.to_owned()),
            ("nsrmc", name.to_owned()),
            ("sz", tax.into()),
            ("skssqq", "2025-01-01".into()),
            ("skssqz", "2025-12-31".into()),
            ("sjse_fen", amount_fen.to_string()),
            ("swjg", format!("国家税务总局{place}税务局")),
            ("kjrq", issue.to_string()),
            ("updated_at", updated),
        ]));
}

impl Population {
    /// How many rows each record type has.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        self.files
            .iter()
            .map(|file| (file.record_type, file.rows.len()))
            .collect()
    }

    /// Writes every source file under `folder`, and `manifest.json` with the counts.
    pub fn write(&self, folder: &Path) -> std::io::Result<()> {
        for file in &self.files {
            let path = folder.join(file.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match file.format {
                Format::Csv => {
                    let mut writer = csv::Writer::from_path(&path)?;
                    writer.write_record(file.columns)?;
                    for row in &file.rows {
                        writer.write_record(
                            file.columns
                                .iter()
                                .map(|c| row.get(*c).map(String::as_str).unwrap_or("")),
                        )?;
                    }
                    writer.flush()?;
                }
                Format::JsonLines => {
                    use std::io::Write;
                    let mut writer = std::io::BufWriter::new(std::fs::File::create(&path)?);
                    for row in &file.rows {
                        // Empty values are JSON null, as a department's export writes them.
                        let object: serde_json::Map<String, serde_json::Value> = file
                            .columns
                            .iter()
                            .map(|c| {
                                let value = row.get(*c).map(String::as_str).unwrap_or("");
                                let json = if value.is_empty() {
                                    serde_json::Value::Null
                                } else {
                                    serde_json::Value::String(value.to_owned())
                                };
                                ((*c).to_owned(), json)
                            })
                            .collect();
                        serde_json::to_writer(&mut writer, &object)?;
                        writer.write_all(b"\n")?;
                    }
                    writer.flush()?;
                }
            }
        }
        let manifest = serde_json::json!({
            "people": self.people,
            "as_of": AS_OF.to_string(),
            "records": self.counts(),
        });
        std::fs::write(
            folder.join("sample").join("manifest.json"),
            serde_json::to_string_pretty(&manifest)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_population_is_consistent_valid_and_repeatable() {
        let population = generate(400, 11);
        assert!(population.people >= 400);
        let again = generate(400, 11);
        for (a, b) in population.files.iter().zip(&again.files) {
            assert_eq!(a.rows, b.rows, "{} differs between runs", a.record_type);
        }
        let counts = population.counts();
        for (record_type, count) in &counts {
            assert!(*count > 0, "no {record_type} rows");
        }
        let file = |t: &str| {
            &population
                .files
                .iter()
                .find(|f| f.record_type == t)
                .unwrap()
                .rows
        };
        // Everyone is in the household register exactly once.
        let members: HashSet<&str> = file("public_security.household_register")
            .iter()
            .map(|r| r["GMSFHM"].as_str())
            .collect();
        assert_eq!(members.len(), population.people);
        // Everyone with a certificate is a registered person, with a valid id.
        for (record_type, column) in [
            ("public_security.resident_id_card", "GMSFHM"),
            ("civil_affairs.marriage_certificate", "holder_id"),
            ("civil_affairs.marriage_certificate", "spouse_id"),
            ("health.birth_certificate", "baby_id_no"),
            ("health.birth_certificate", "mother_id_no"),
            ("education.student_status", "sfzh"),
            ("human_resources.social_insurance_enrolment", "aac002"),
        ] {
            for row in file(record_type) {
                let id = &row[column];
                ResidentId::parse_on(id, AS_OF).unwrap();
                assert!(
                    members.contains(id.as_str()),
                    "{record_type}.{column} {id} is nobody"
                );
            }
        }
        // Married couples hold a certificate each, naming each other.
        let marriages = file("civil_affairs.marriage_certificate");
        assert_eq!(marriages.len() % 2, 0);
        for pair in marriages.chunks(2) {
            assert_eq!(pair[0]["holder_id"], pair[1]["spouse_id"]);
            assert_eq!(pair[0]["reg_no"], pair[1]["reg_no"]);
        }
        // Every business, and every employer named, has a valid credit code and a licence.
        let licensed: HashSet<&str> = file("market_regulation.business_licence")
            .iter()
            .map(|r| {
                CreditCode::parse(&r["uscc"]).unwrap();
                r["uscc"].as_str()
            })
            .collect();
        for row in file("human_resources.social_insurance_enrolment") {
            assert!(licensed.contains(row["employer_uscc"].as_str()));
        }
        // Certificate ids are valid and unique across the whole world.
        let mut ids = HashSet::new();
        for source in &population.files {
            let column = source.columns[0];
            for row in &source.rows {
                CertificateId::parse(&row[column]).unwrap();
                assert!(ids.insert(row[column].clone()), "{} repeats", row[column]);
            }
        }
        // Nothing is dated after the as-of date.
        for row in file("health.birth_certificate") {
            assert!(CivilDate::parse_iso(&row["issue_date"]).unwrap() <= AS_OF);
        }
    }
}
