//! Generated sample data in the health department's own export format. Every identifier
//! has a valid check character; every person is invented.

use datarun_domain::date::CivilDate;
use datarun_domain::{CertificateId, ResidentId};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// The health department's export columns, in order.
pub const BIRTH_COLUMNS: [&str; 14] = [
    "cert_no",
    "baby_name",
    "baby_sex",
    "baby_id_no",
    "birth_date",
    "birth_place",
    "weight_g",
    "hospital",
    "mother_name",
    "mother_id_no",
    "father_name",
    "father_id_no",
    "issue_date",
    "updated_at",
];

pub(crate) const SURNAMES: [&str; 16] = [
    "陈", "李", "黄", "张", "梁", "林", "刘", "吴", "罗", "何", "郑", "杨", "谢", "冯", "邓", "周",
];
pub(crate) const GIVEN: [&str; 20] = [
    "子轩", "梓涵", "浩然", "诗琪", "俊杰", "欣怡", "宇航", "雨桐", "嘉豪", "思颖", "志强", "美玲",
    "家乐", "晓彤", "建华", "婉婷", "伟明", "丽华", "振宇", "慧敏",
];
/// Guangdong districts: (division code, place name).
pub(crate) const DISTRICTS: [(&str, &str); 8] = [
    ("440103", "广东省广州市荔湾区"),
    ("440104", "广东省广州市越秀区"),
    ("440105", "广东省广州市海珠区"),
    ("440106", "广东省广州市天河区"),
    ("440111", "广东省广州市白云区"),
    ("440303", "广东省深圳市罗湖区"),
    ("440304", "广东省深圳市福田区"),
    ("445102", "广东省潮州市湘桥区"),
];
pub(crate) const HOSPITALS: [&str; 5] = [
    "广州市妇女儿童医疗中心",
    "广东省妇幼保健院",
    "中山大学附属第一医院",
    "深圳市妇幼保健院",
    "潮州市中心医院",
];

/// splitmix64: a small deterministic generator, so a seed always gives the same file.
pub(crate) struct Generator(pub(crate) u64);

impl Generator {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(crate) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    pub(crate) fn date_between(&mut self, from: CivilDate, to: CivilDate) -> CivilDate {
        let (a, b) = (from.days_since_epoch(), to.days_since_epoch());
        CivilDate::from_days_since_epoch(a + self.below((b - a) as u64) as i64)
    }
}

fn resident_id(
    generator: &mut Generator,
    division: &str,
    birth: CivilDate,
    male: bool,
    used: &mut HashSet<String>,
) -> String {
    loop {
        // The 17th digit is odd for men and even for women.
        let sequence = generator.below(50) * 2 + u64::from(male);
        let body = format!(
            "{division}{:04}{:02}{:02}{:03}",
            birth.year,
            birth.month,
            birth.day,
            sequence % 1000
        );
        let id = format!("{body}{}", ResidentId::check_character(&body));
        if used.insert(id.clone()) {
            return id;
        }
    }
}

/// `count` birth-certificate rows, deterministic for a given `seed`.
pub fn birth_certificates(count: usize, seed: u64) -> Vec<BTreeMap<String, String>> {
    let mut generator = Generator(seed);
    let mut used = HashSet::new();
    let earliest = CivilDate::new(2010, 1, 1).unwrap_or(CivilDate {
        year: 2010,
        month: 1,
        day: 1,
    });
    let latest = CivilDate::new(2025, 12, 31).unwrap_or(CivilDate {
        year: 2025,
        month: 12,
        day: 31,
    });
    (0..count)
        .map(|index| {
            let (division, place) = DISTRICTS[generator.below(DISTRICTS.len() as u64) as usize];
            let birth = generator.date_between(earliest, latest);
            let male = generator.below(2) == 0;
            let child_surname = generator.pick(&SURNAMES);
            let mother_birth = CivilDate::from_days_since_epoch(
                birth.days_since_epoch() - 365 * (22 + generator.below(15) as i64),
            );
            let father_birth = CivilDate::from_days_since_epoch(
                birth.days_since_epoch() - 365 * (23 + generator.below(17) as i64),
            );
            let issue = CivilDate::from_days_since_epoch(
                birth.days_since_epoch() + 1 + generator.below(20) as i64,
            );
            let city = format!("{}00", &division[..4]);
            let certificate = CertificateId::build("CSZM", &city, issue.year, index as u32 + 1)
                .map(|id| id.to_string())
                .unwrap_or_default();
            let has_father = generator.below(10) != 0;
            let row = [
                ("cert_no", certificate),
                (
                    "baby_name",
                    format!("{child_surname}{}", generator.pick(&GIVEN)),
                ),
                ("baby_sex", if male { "男" } else { "女" }.to_owned()),
                (
                    "baby_id_no",
                    resident_id(&mut generator, division, birth, male, &mut used),
                ),
                ("birth_date", birth.to_string()),
                ("birth_place", place.to_owned()),
                ("weight_g", (2500 + generator.below(1800)).to_string()),
                ("hospital", generator.pick(&HOSPITALS).to_owned()),
                (
                    "mother_name",
                    format!("{}{}", generator.pick(&SURNAMES), generator.pick(&GIVEN)),
                ),
                (
                    "mother_id_no",
                    resident_id(&mut generator, division, mother_birth, false, &mut used),
                ),
                (
                    "father_name",
                    if has_father {
                        format!("{child_surname}{}", generator.pick(&GIVEN))
                    } else {
                        String::new()
                    },
                ),
                (
                    "father_id_no",
                    if has_father {
                        resident_id(&mut generator, division, father_birth, true, &mut used)
                    } else {
                        String::new()
                    },
                ),
                ("issue_date", issue.to_string()),
                (
                    "updated_at",
                    format!(
                        "{issue} {:02}:{:02}:{:02}",
                        8 + generator.below(10),
                        generator.below(60),
                        generator.below(60)
                    ),
                ),
            ];
            row.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
        })
        .collect()
}

/// Writes rows as CSV with the department's header.
pub fn write_csv(path: &Path, rows: &[BTreeMap<String, String>]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut writer = csv::Writer::from_path(path)?;
    writer.write_record(BIRTH_COLUMNS)?;
    for row in rows {
        writer.write_record(
            BIRTH_COLUMNS
                .iter()
                .map(|c| row.get(*c).map(String::as_str).unwrap_or("")),
        )?;
    }
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identifiers_are_valid_unique_and_repeatable() {
        let rows = birth_certificates(300, 7);
        assert_eq!(rows, birth_certificates(300, 7));
        let mut children = HashSet::new();
        for row in &rows {
            let child = ResidentId::parse(&row["baby_id_no"]).unwrap();
            assert_eq!(child.birth_date().to_string(), row["birth_date"]);
            ResidentId::parse(&row["mother_id_no"]).unwrap();
            CertificateId::parse(&row["cert_no"]).unwrap();
            assert!(children.insert(child));
        }
    }
}
