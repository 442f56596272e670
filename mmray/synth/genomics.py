"""Synthetic genomics in real file formats: expression, MAF, gene-level CNV, GMT.

What each file carries (the rest is realistic noise):

* ``expression.tsv`` (genes x samples, TPM-like): ``log x = mu_g + sigma_g * eps
  + lib_j + loading * factor``.  Proliferation genes load on ``z_prolif``
  (harmful), immune genes on ``z_immune`` (protective); squamous and adeno
  differentiation genes are shifted up in their subtype.
* ``mutations.maf``: driver mutations exactly where ``patient.mutations`` says,
  as deleterious calls; passengers elsewhere, plus Silent/UTR/intron decoys in
  driver genes of patients *without* the driver, so "any call" is wrong.
* ``cnv.tsv`` (GISTIC-style thresholded -2..2): driver calls from
  ``patient.cnv`` plus random background segments.
* ``signatures.gmt``: planted, weak, noise and pathway-style sets; some genes
  of every kind are missing from the expression platform, as in real GMTs.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from mmray.errors import ConfigError
from mmray.synth.latent import DRIVER_CNV, DRIVER_MUTATIONS, Patient
from mmray.synth.profiles import SynthProfile

PROLIFERATION = ("MKI67", "TOP2A", "CCNB1", "BUB1", "CDK1", "AURKA", "PLK1", "CENPF", "TPX2", "KIF2C",
                 "MCM2", "FOXM1", "E2F1", "BIRC5", "CCNA2")
IMMUNE = ("CD8A", "GZMB", "PRF1", "CXCL9", "CXCL10", "IFNG", "GZMA", "NKG7", "CD3E", "LCK", "ZAP70",
          "CCL5", "IDO1", "LAG3", "PDCD1")
SQUAMOUS = ("KRT5", "KRT6A", "TP63", "SOX2", "DSG3", "DSC3", "PKP1", "SPRR1B", "CLCA2", "KRT14")
ADENO = ("NKX2-1", "NAPSA", "SFTPC", "SFTPB", "SFTA2", "LMO3", "CEACAM6", "MUC1", "HNF1B", "TMPRSS2")
DRIVERS = tuple(DRIVER_MUTATIONS) + tuple(DRIVER_CNV)
PLANTED = PROLIFERATION + IMMUNE + SQUAMOUS + ADENO + DRIVERS
# Real members of these programmes that the synthetic platform lacks.
OFF_PLATFORM = {"SIG_PROLIFERATION": ("CDC20", "UBE2C", "PTTG1"), "SIG_IMMUNE_CYTOLYTIC": ("GNLY", "KLRK1"),
                "SIG_SQUAMOUS_DIFFERENTIATION": ("KRT6B",), "SIG_ADENO_DIFFERENTIATION": ("SFTPA1",)}

# GRCh38 locus and Entrez id of the drivers, so MAF rows look like real calls.
DRIVER_LOCI = {
    "STK11": ("chr19", 1177558, 1228431, 6794), "KEAP1": ("chr19", 10486120, 10503010, 9817),
    "EGFR": ("chr7", 55019017, 55211628, 1956), "TP53": ("chr17", 7661779, 7687538, 7157),
    "KRAS": ("chr12", 25205246, 25250929, 3845), "MYC": ("chr8", 127735434, 127742951, 4609),
    "CDKN2A": ("chr9", 21967753, 21995301, 1029),
}
# Recurrent driver calls: (class, type, start, ref, alt, HGVSp_Short).
DRIVER_VARIANTS = {
    "KRAS": [("Missense_Mutation", "SNP", 25245351, "C", "A", "p.G12C"),
             ("Missense_Mutation", "SNP", 25245350, "C", "T", "p.G12D"),
             ("Missense_Mutation", "SNP", 25245347, "C", "A", "p.G13C")],
    "EGFR": [("Missense_Mutation", "SNP", 55191822, "T", "G", "p.L858R"),
             ("In_Frame_Del", "DEL", 55174772, "GGAATTAAGAGAAGC", "-", "p.E746_A750del")],
    "TP53": [("Missense_Mutation", "SNP", 7673802, "C", "T", "p.R273H"),
             ("Missense_Mutation", "SNP", 7674220, "C", "T", "p.R248Q"),
             ("Missense_Mutation", "SNP", 7675088, "C", "T", "p.R175H"),
             ("Nonsense_Mutation", "SNP", 7674945, "G", "A", "p.R213*")],
    "STK11": [("Nonsense_Mutation", "SNP", 1207021, "C", "T", "p.Q37*"),
              ("Frame_Shift_Del", "DEL", 1218453, "G", "-", "p.E57Gfs*7")],
    "KEAP1": [("Missense_Mutation", "SNP", 10489788, "C", "A", "p.G333C"),
              ("Missense_Mutation", "SNP", 10488917, "G", "A", "p.R470C")],
}
IMPACT = {"Missense_Mutation": "MODERATE", "In_Frame_Del": "MODERATE", "Nonsense_Mutation": "HIGH",
          "Frame_Shift_Del": "HIGH", "Frame_Shift_Ins": "HIGH", "Splice_Site": "HIGH", "Silent": "LOW",
          "3'UTR": "MODIFIER", "5'UTR": "MODIFIER", "Intron": "MODIFIER"}
PASSENGER_CLASSES = ("Missense_Mutation", "Silent", "Nonsense_Mutation", "Frame_Shift_Del", "Frame_Shift_Ins",
                     "Splice_Site", "3'UTR", "Intron", "5'UTR")
PASSENGER_PROBS = (0.46, 0.24, 0.04, 0.03, 0.02, 0.02, 0.09, 0.08, 0.02)
MAF_COLUMNS = ("Hugo_Symbol", "Entrez_Gene_Id", "Center", "NCBI_Build", "Chromosome", "Start_Position",
               "End_Position", "Strand", "Variant_Classification", "Variant_Type", "Reference_Allele",
               "Tumor_Seq_Allele1", "Tumor_Seq_Allele2", "dbSNP_RS", "Tumor_Sample_Barcode",
               "Matched_Norm_Sample_Barcode", "HGVSp_Short", "t_depth", "t_ref_count", "t_alt_count",
               "n_depth", "IMPACT", "FILTER")
CHROMS = tuple(f"chr{c}" for c in [*range(1, 23), "X"])
AMINO = "ACDEFGHIKLMNPQRSTVWY"
BASES = "ACGT"

# Background symbol families with realistic index ranges, e.g. ZNF (1..850) or C<chrom>orf<n>.
_FILLER_FAMILIES = (("ZNF{}", (850,)), ("SLC{}A{}", (45, 14)), ("TMEM{}", (270,)), ("CCDC{}", (190,)),
                    ("FAM{}A", (230,)), ("ANKRD{}", (65,)), ("LRRC{}", (75,)), ("KLHL{}", (42,)),
                    ("WDR{}", (97,)), ("TRIM{}", (75,)), ("RNF{}", (220,)), ("USP{}", (54,)),
                    ("C{}orf{}", (22, 200)), ("OR{}A{}", (14, 20)), ("KIAA{:04d}", (2026,)), ("ZC3H{}", (18,)))
_NOISE_NAMES = ("GOBP_CILIUM_ASSEMBLY", "GOBP_LIPID_TRANSPORT", "GOBP_AXON_GUIDANCE", "GOBP_RNA_SPLICING",
                "GOBP_PROTEIN_GLYCOSYLATION", "GOBP_ENDOSOMAL_TRANSPORT", "GOBP_FATTY_ACID_OXIDATION",
                "GOBP_CHROMATIN_REMODELING", "GOBP_GOLGI_VESICLE_TRANSPORT", "GOBP_PEROXISOME_ORGANIZATION",
                "GOBP_SYNAPSE_ASSEMBLY", "GOBP_STEROID_METABOLIC_PROCESS")
_PATHWAY_BASES = ("CELL_CYCLE", "INTERFERON_GAMMA_SIGNALING", "OXIDATIVE_PHOSPHORYLATION", "RIBOSOME",
                  "GLYCOLYSIS_GLUCONEOGENESIS", "PEROXISOME", "FOCAL_ADHESION", "WNT_SIGNALING",
                  "HEDGEHOG_SIGNALING", "NOTCH_SIGNALING", "MAPK_SIGNALING", "TGF_BETA_SIGNALING",
                  "PURINE_METABOLISM", "LYSOSOME", "SPLICEOSOME", "PROTEASOME", "ABC_TRANSPORTERS",
                  "CALCIUM_SIGNALING", "TIGHT_JUNCTION", "GAP_JUNCTION", "AXON_GUIDANCE", "ENDOCYTOSIS")
_GMT_URL = "http://www.gsea-msigdb.org/gsea/msigdb/human/geneset/{}.html"


def gene_universe(n_genes: int) -> tuple[list[str], list[str]]:
    """``(platform genes sorted, off-platform filler symbols)``; depends on ``n_genes`` only.

    The filler sequence is prefix-stable, so a smaller profile's genes are a
    subset of a larger one's.
    """
    n_filler = n_genes - len(PLANTED)
    if n_filler < 40:
        raise ConfigError([("n_genes", f"need at least {len(PLANTED) + 40} genes (planted + background), "
                                       f"got {n_genes}; raise n_genes in the synth profile")])
    taken = set(PLANTED) | {g for genes in OFF_PLATFORM.values() for g in genes}
    rng = np.random.default_rng(20_240_601)  # fixed: the gene universe does not depend on the cohort seed
    filler: list[str] = []
    for attempt in range(100 * (n_filler + 200)):
        if len(filler) >= n_filler + 200:
            break
        pattern, highs = _FILLER_FAMILIES[attempt % len(_FILLER_FAMILIES)]
        sym = pattern.format(*(int(rng.integers(1, hi + 1)) for hi in highs))
        if sym not in taken:
            taken.add(sym)
            filler.append(sym)
    if len(filler) < n_filler + 200:
        raise ConfigError([("n_genes", f"cannot make {n_genes} distinct gene symbols; use fewer genes")])
    return sorted(PLANTED + tuple(filler[:n_filler])), filler[n_filler:]


def _locus(gene: str) -> tuple[str, int, int, int]:
    """``(chromosome, start, end, entrez)``: real for drivers, hashed otherwise."""
    if gene in DRIVER_LOCI:
        return DRIVER_LOCI[gene]
    h = zlib.crc32(gene.encode())
    start = 100_000 + (h // 23) % 140_000_000
    return CHROMS[h % 23], start, start + 5_000 + h % 95_000, 10_000 + h % 140_000


def _base36(n: int, width: int = 3) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    for _ in range(width):
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out


def aliquot_barcode(p: Patient, *, analyte: str, center: str, sample: str = "01A") -> str:
    """Full TCGA aliquot barcode, e.g. ``TCGA-05-1000-01A-11R-A00Z-07``; one plate per 48 patients."""
    plate = "A" + _base36((p.index // 48) * 131 + ord(analyte) * 7 + int(center), 3)
    portion = "11" if sample.startswith("0") else "01"
    return f"{p.patient_id}-{sample}-{portion}{analyte}-{plate}-{center}"


def _corrupt_target(p: Patient) -> str | None:
    """Which genomics file shows this patient's malformed row: the MAF when possible."""
    if "malformed_table_row" not in p.corruptions:
        return None
    for target, has in (("mutations", p.has_mutations), ("expression", p.has_expression), ("cnv", p.has_cnv)):
        if has:
            return target
    return None


def _planted_effects(rng: np.random.Generator) -> dict[str, dict]:
    """Gene -> factor and log-scale loading of each planted expression gene."""
    planted: dict[str, dict] = {}
    for genes, factor in ((PROLIFERATION, "z_prolif"), (IMMUNE, "z_immune"),
                          (SQUAMOUS, "subtype:squamous_cell"), (ADENO, "subtype:adenocarcinoma")):
        lo, hi = (0.75, 1.1) if factor.startswith("z_") else (2.0, 3.0)
        for g in genes:
            planted[g] = {"factor": factor, "loading": round(float(rng.uniform(lo, hi)), 3)}
    return planted


def _write_expression(patients, *, genes, planted, path: Path, rng, corrupt: list[dict]) -> list[str]:
    """Genes x samples TPM-like matrix; returns the sample barcodes."""
    samples = [p for p in patients if p.has_expression]
    n_g, n_s = len(genes), len(samples)
    mu = rng.uniform(np.log(0.5), np.log(2000.0), size=n_g)  # means span ~4 orders of magnitude
    sigma = rng.uniform(0.25, 0.6, size=n_g)
    log_x = mu[:, None] + sigma[:, None] * rng.normal(size=(n_g, n_s)) + rng.normal(0, 0.15, size=n_s)[None, :]
    factors = {"z_prolif": np.array([p.z_prolif for p in samples]),
               "z_immune": np.array([p.z_immune for p in samples])}
    for i, g in enumerate(genes):
        if g not in planted:
            continue
        f, load = planted[g]["factor"], planted[g]["loading"]
        if f.startswith("subtype:"):
            log_x[i] += load * np.array([p.subtype == f.split(":", 1)[1] for p in samples], dtype=float)
        else:
            log_x[i] += load * factors[f]
    x = np.round(np.exp(log_x), 3)
    x[x < 0.05] = 0.0  # RNA-seq dropout: low genes read zero
    barcodes = [aliquot_barcode(p, analyte="R", center="07") for p in samples]
    # Formatted by hand: pandas' float_format path is ~4x slower on large matrices.
    row_fmt = "\t".join(["%.3f"] * n_s)
    rows = [f"{g}\t{row_fmt % tuple(x[i])}" if n_s else g for i, g in enumerate(genes)]
    for j, p in enumerate(samples):
        if _corrupt_target(p) == "expression":
            i = int(rng.integers(n_g))
            cells = rows[i].split("\t")
            cells[j + 1] = "NA?"
            rows[i] = "\t".join(cells)
            corrupt.append({"file": path.name, "line": i + 2, "patient_id": p.patient_id,
                            "column": barcodes[j], "gene": genes[i], "value": "NA?",
                            "problem": "non-numeric expression value"})
    path.write_text("\n".join(["\t".join(["Hugo_Symbol", *barcodes]), *rows]) + "\n")
    return barcodes


def _variant_row(gene: str, *, klass: str, rng, hotspot: tuple | None = None) -> dict:
    chrom, g_start, g_end, entrez = _locus(gene)
    if hotspot is not None:
        klass, vtype, start, ref, alt, hgvsp = hotspot
    else:
        start = int(rng.integers(g_start, g_end))
        pos, aa = int(rng.integers(2, 1200)), str(rng.choice(list(AMINO)))
        vtype = {"Frame_Shift_Del": "DEL", "Frame_Shift_Ins": "INS"}.get(klass, "SNP")
        ref = "-" if vtype == "INS" else "".join(rng.choice(list(BASES), size=1 if vtype == "SNP" else 2))
        alt = "-" if vtype == "DEL" else str(rng.choice([b for b in BASES if b != ref[0]]))
        hgvsp = {"Missense_Mutation": f"p.{aa}{pos}{rng.choice([a for a in AMINO if a != aa])}",
                 "Silent": f"p.{aa}{pos}=", "Nonsense_Mutation": f"p.{aa}{pos}*",
                 "Frame_Shift_Del": f"p.{aa}{pos}fs", "Frame_Shift_Ins": f"p.{aa}{pos}fs",
                 "Splice_Site": f"p.X{pos}_splice"}.get(klass, "")
    end = start + (len(ref) - 1 if vtype == "DEL" else 1 if vtype == "INS" else 0)
    depth = int(rng.integers(30, 300))
    alt_count = max(3, int(round(depth * rng.uniform(0.06, 0.6))))
    return {"Hugo_Symbol": gene, "Entrez_Gene_Id": entrez, "Center": "BI", "NCBI_Build": "GRCh38",
            "Chromosome": chrom, "Start_Position": start, "End_Position": end, "Strand": "+",
            "Variant_Classification": klass, "Variant_Type": vtype, "Reference_Allele": ref,
            "Tumor_Seq_Allele1": ref, "Tumor_Seq_Allele2": alt, "dbSNP_RS": "novel",
            "HGVSp_Short": hgvsp, "t_depth": depth, "t_ref_count": depth - alt_count,
            "t_alt_count": alt_count, "n_depth": int(rng.integers(20, 200)), "IMPACT": IMPACT[klass],
            "FILTER": "PASS"}


def _write_maf(patients, *, genes, path: Path, rng, corrupt: list[dict]) -> tuple[list[str], list[dict]]:
    """Returns the tumour barcodes and the decoys (non-deleterious calls in driver genes)."""
    background = [g for g in genes if g not in DRIVERS]
    samples = [p for p in patients if p.has_mutations]
    rows: list[tuple[tuple, dict, Patient]] = []
    decoys: list[dict] = []

    def add(p: Patient, call: dict) -> None:
        call.update(Tumor_Sample_Barcode=aliquot_barcode(p, analyte="D", center="08"),
                    Matched_Norm_Sample_Barcode=aliquot_barcode(p, analyte="D", center="08", sample="10A"))
        rows.append(((p.index, CHROMS.index(call["Chromosome"]), call["Start_Position"], call["Hugo_Symbol"]),
                     call, p))

    def add_decoy(p: Patient, gene: str, klass: str) -> None:
        add(p, _variant_row(gene, klass=klass, rng=rng))
        decoys.append({"patient_id": p.patient_id, "gene": gene, "class": klass})

    bad: dict | None = None
    for p in samples:
        for gene, mutated in p.mutations.items():
            if mutated:
                variants = DRIVER_VARIANTS.get(gene)
                hotspot = variants[int(rng.integers(len(variants)))] if variants else None
                add(p, _variant_row(gene, klass="Missense_Mutation", rng=rng, hotspot=hotspot))
            elif rng.random() < 0.08:
                add_decoy(p, gene, str(rng.choice(["Silent", "Silent", "Intron", "3'UTR"])))
        # Smokers carry more passengers (tobacco mutational burden).
        for _ in range(int(rng.poisson(14 if p.smoking != "Never" else 6))):
            klass = str(rng.choice(PASSENGER_CLASSES, p=PASSENGER_PROBS))
            add(p, _variant_row(background[int(rng.integers(len(background)))], klass=klass, rng=rng))
        if _corrupt_target(p) == "mutations":
            bad = _variant_row(background[int(rng.integers(len(background)))], klass="Missense_Mutation", rng=rng)
            add(p, bad)
    if not any(d["class"] == "Silent" for d in decoys):
        # Small cohorts must still show a Silent call in a driver gene of a non-carrier.
        for p in samples:
            wild = [g for g, m in p.mutations.items() if not m]
            if wild:
                add_decoy(p, wild[0], "Silent")
                break
    rows.sort(key=lambda r: r[0])
    lines = ["#version 2.4", "\t".join(MAF_COLUMNS)]
    for _, call, p in rows:
        fields = [str(call[col]) for col in MAF_COLUMNS]
        if call is bad:
            # A truncated export: non-numeric position and the last two fields lost.
            fields[MAF_COLUMNS.index("Start_Position")] = "NA?"
            fields = fields[:-2]
            corrupt.append({"file": path.name, "line": len(lines) + 1, "patient_id": p.patient_id,
                            "column": "Start_Position", "value": "NA?", "gene": call["Hugo_Symbol"],
                            "problem": f"non-numeric Start_Position 'NA?' and row truncated to {len(fields)} "
                                       f"of {len(MAF_COLUMNS)} fields (IMPACT and FILTER missing)"})
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return [aliquot_barcode(p, analyte="D", center="08") for p in samples], decoys


def _write_cnv(patients, *, genes, path: Path, rng, corrupt: list[dict]) -> list[str]:
    """Gene-level thresholded calls; drivers exactly as ``patient.cnv``."""
    samples = [p for p in patients if p.has_cnv]
    loci = [_locus(g) for g in genes]
    by_chrom: dict[str, list[int]] = {}
    for i in sorted(range(len(genes)), key=lambda i: (CHROMS.index(loci[i][0]), loci[i][1])):
        by_chrom.setdefault(loci[i][0], []).append(i)
    calls = np.zeros((len(genes), len(samples)), dtype=int)
    for j, p in enumerate(samples):
        # Background: a few contiguous segments (arm-level gains/losses, rare deep events).
        for _ in range(int(rng.poisson(3 if p.smoking != "Never" else 1.5))):
            order = by_chrom[CHROMS[int(rng.integers(len(CHROMS)))]]
            a, b = sorted(int(v) for v in rng.integers(0, len(order) + 1, size=2))
            level = int(rng.choice([-1, 1])) * (2 if rng.random() < 0.1 else 1)
            calls[order[a:b], j] = level
        for g, value in p.cnv.items():
            calls[genes.index(g), j] = value
    barcodes = [aliquot_barcode(p, analyte="D", center="01") for p in samples]
    df = pd.DataFrame(calls, index=pd.Index(genes, name="Gene Symbol"), columns=barcodes).astype(object)
    for j, p in enumerate(samples):
        if _corrupt_target(p) == "cnv":
            row = int(rng.integers(len(genes)))
            df.iat[row, j] = "NA?"
            corrupt.append({"file": path.name, "line": row + 2, "patient_id": p.patient_id,
                            "column": barcodes[j], "gene": genes[row], "value": "NA?",
                            "problem": "non-numeric copy-number call"})
    df.to_csv(path, sep="\t", lineterminator="\n")
    return barcodes


def _signatures(*, genes, off_platform, planted, profile: SynthProfile, rng) -> dict[str, dict]:
    """Signature name -> genes, genes found on the platform, signal kind and mean loading.

    ``loading`` is the mean planted loading over the genes found (0 for
    background genes), a scale-free hint of how strong the set's signal is.
    """
    background = [g for g in genes if g not in PLANTED]
    extra = list(off_platform)

    def pick(pool: list[str], n: int) -> list[str]:
        return [str(g) for g in rng.choice(pool, size=min(n, len(pool)), replace=False)]

    def absent(n: int) -> list[str]:
        return [extra.pop(0) for _ in range(min(n, len(extra)))]

    sets: dict[str, tuple[list[str], str]] = {
        "SIG_PROLIFERATION": ([*PROLIFERATION, *OFF_PLATFORM["SIG_PROLIFERATION"]], "survival_harmful"),
        "SIG_IMMUNE_CYTOLYTIC": ([*IMMUNE, *OFF_PLATFORM["SIG_IMMUNE_CYTOLYTIC"]], "survival_protective"),
        "SIG_SQUAMOUS_DIFFERENTIATION": ([*SQUAMOUS, *OFF_PLATFORM["SIG_SQUAMOUS_DIFFERENTIATION"]], "subtype"),
        "SIG_ADENO_DIFFERENTIATION": ([*ADENO, *OFF_PLATFORM["SIG_ADENO_DIFFERENTIATION"]], "subtype"),
        # Weak sets: a few planted genes diluted in background.
        "SIG_MITOTIC_SPINDLE_MIXED": ([*pick(list(PROLIFERATION), 3), *pick(background, 12), *absent(1)], "weak"),
        "SIG_T_CELL_ACTIVATION_MIXED": ([*pick(list(IMMUNE), 3), *pick(background, 12), *absent(1)], "weak"),
    }
    for k in range(profile.n_noise_signatures):
        name = _NOISE_NAMES[k % len(_NOISE_NAMES)]
        name += f"_{k // len(_NOISE_NAMES) + 1}" if k >= len(_NOISE_NAMES) else ""
        sets[name] = ([*pick(background, int(rng.integers(10, 40))), *absent(int(rng.integers(0, 3)))], "none")
    for k in range(profile.n_pathways):
        n_base = len(_PATHWAY_BASES)
        name = ("KEGG_", "REACTOME_")[(k + k // n_base) % 2] + _PATHWAY_BASES[k % n_base]
        name += f"_{k // (2 * n_base) + 1}" if k >= 2 * n_base else ""
        members = [*pick(background, int(rng.integers(15, 60))), *absent(int(rng.integers(1, 4)))]
        signal = "none"
        if k == 0:  # like the real ones, the first two pathways overlap a planted programme
            members, signal = [*pick(list(PROLIFERATION), 4), *members], "weak"
        elif k == 1:
            members, signal = [*pick(list(IMMUNE), 3), *members], "weak"
        sets[name] = (members, signal)
    gene_set = set(genes)
    out = {}
    for name, (members, signal) in sets.items():
        found = [g for g in members if g in gene_set]
        loading = float(np.mean([planted.get(g, {}).get("loading", 0.0) for g in found])) if found else 0.0
        out[name] = {"genes": members, "genes_found": found, "signal": signal, "loading": round(loading, 3)}
    return out


def write_genomics(patients: list[Patient], *, out_dir: Path, profile: SynthProfile, seed: int) -> dict:
    """Write ``expression.tsv``, ``mutations.maf``, ``cnv.tsv`` and ``signatures.gmt``.

    Returns the truth: file names, platform genes, signatures (with the genes
    found on the platform), planted expression effects, driver effects,
    decoy calls, sample barcodes and every malformed row written (file,
    1-based line, patient, column, problem).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    genes, off_platform = gene_universe(profile.n_genes)
    rng = np.random.default_rng([seed, 4])
    planted = _planted_effects(rng)
    files = {"expression": "expression.tsv", "mutations": "mutations.maf", "cnv": "cnv.tsv",
             "signatures": "signatures.gmt"}
    corrupt: list[dict] = []
    expr_samples = _write_expression(patients, genes=genes, planted=planted, path=out_dir / files["expression"],
                                     rng=rng, corrupt=corrupt)
    maf_samples, decoys = _write_maf(patients, genes=genes, path=out_dir / files["mutations"], rng=rng,
                                     corrupt=corrupt)
    cnv_samples = _write_cnv(patients, genes=genes, path=out_dir / files["cnv"], rng=rng, corrupt=corrupt)
    signatures = _signatures(genes=genes, off_platform=off_platform, planted=planted, profile=profile, rng=rng)
    with open(out_dir / files["signatures"], "w") as fh:
        for name, sig in signatures.items():
            fh.write("\t".join([name, _GMT_URL.format(name), *sig["genes"]]) + "\n")
    return {
        "files": files,
        "genes": genes,
        "signatures": signatures,
        "planted_genes": planted,
        "mutation_effects": {g: float(e) for g, (_, e) in DRIVER_MUTATIONS.items()},
        "cnv_effects": {g: {"direction": int(d), "log_hazard": float(e)} for g, (d, _, e) in DRIVER_CNV.items()},
        "decoy_calls": decoys,
        "samples": {"expression": expr_samples, "mutations": maf_samples, "cnv": cnv_samples},
        "corrupt_rows": corrupt,
    }
