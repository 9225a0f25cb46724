"""What the annotator writes: labels -> TIS-like and SCP codes, with a site's annotation errors."""

from __future__ import annotations

import numpy as np

from simulations.synth.pathology import ABNORMAL, is_consistent, normalise

#: TIS-like hierarchical codes (docs/formats.md). Sinus rhythm (2.1) is added when it applies.
TIS_CODES = {
    "NORM": "1.1",
    "SBRAD": "2.2",
    "STACH": "2.3",
    "AFIB": "2.4",
    "1AVB": "3.1.1",
    "CRBBB": "3.2.1",
    "IRBBB": "3.2.2",
    "CLBBB": "3.3.1",
    "LVH": "4.1",
    "RVH": "4.2",
    "LAO/LAE": "4.3",
    "RAO/RAE": "4.4",
    "ISC_": "5.1",
    "NDT": "5.2",
    "LNGQT": "5.3",
    "IMI": "6.1",
    "ASMI": "6.2",
    "LMI": "6.3",
}
_RHYTHM = {"AFIB", "SBRAD", "STACH"}

#: Real PTB-XL scp_statements.csv rows for the codes the generator writes (header included).
SCP_STATEMENTS = """\
,description,diagnostic,form,rhythm,diagnostic_class,diagnostic_subclass,Statement Category,SCP-ECG Statement Description,AHA code,aECG REFID,CDISC Code,DICOM Code
NORM,normal ECG,1.0,,,NORM,NORM,Normal/abnormal,normal ECG,1,,,F-000B7
LVH,left ventricular hypertrophy,1.0,,,HYP,LVH,Ventricular Hypertrophy,left ventricular hypertrophy,142,,C71076,
IRBBB,incomplete right bundle branch block,1.0,,,CD,IRBBB,Intraventricular and intra-atrial Conduction disturbances,incomplete right bundle branch block,105,MDC_ECG_BEAT_RBB_BLK_INCOMP,C71048,D3-33112
1AVB,first degree AV block,1.0,,,CD,_AVB,"Sinus node dysfunction, atrial and AV-conduction defects",first degree AV block,,MDC_ECG_RHY_AV_HEART_BLK_DEG_1,C111088,
CRBBB,complete right bundle branch block,1.0,,,CD,CRBBB,Intraventricular and intra-atrial Conduction disturbances,(complete) right bundle branch block,106,MDC_ECG_BEAT_RBB_BLK_COMP,C62270,D3-33110
CLBBB,complete left bundle branch block,1.0,,,CD,CLBBB,Intraventricular and intra-atrial Conduction disturbances,(complete) left bundle branch block,104,MDC_ECG_BEAT_LBB_BLK_COMP,C62269,D3-33120 or 122752
SR,sinus rhythm,,,1.0,,,Statements related to impulse formation (abnormalities),sinus rhythm,20,MDC_ECG_RHY_SINUS_RHY,,
AFIB,atrial fibrillation,,,1.0,,,Statements related to impulse formation (abnormalities),atrial fibrillation,50,MDC_ECG_RHY_ATR_FIB,,D3-31520
STACH,sinus tachycardia,,,1.0,,,Statements related to impulse formation (abnormalities),sinus tachycardia,21,MDC_ECG_RHY_SINUS_TACHY,,
SBRAD,sinus bradycardia,,,1.0,,,Statements related to impulse formation (abnormalities),sinus bradycardia,22,MDC_ECG_RHY_SINUS_BRADY,,
RVH,right ventricular hypertrophy,1.0,,,HYP,RVH,Ventricular Hypertrophy,right ventricular hypertrophy,143,,C71077,
LAO/LAE,left atrial overload/enlargement,1.0,,,HYP,LAO/LAE,Atrial statements,left atrial overload/enlargement,140,,,
RAO/RAE,right atrial overload/enlargement,1.0,,,HYP,RAO/RAE,Atrial statements,right atrial overload/enlargement,141,,,
ISC_,non-specific ischemic,1.0,,,STTC,ISC_,Basic roots for coding ST-T changes and abnormalities,ischemic ST-T changes,226,,,
NDT,non-diagnostic T abnormalities,1.0,1.0,,STTC,STTC,other ST-T descriptive statements,non-diagnostic T abnormalities,,,,
LNGQT,long QT-interval,1.0,1.0,,STTC,STTC,other ST-T descriptive statements,long QT-interval,148,,,
IMI,inferior myocardial infarction,1.0,,,MI,IMI,Myocardial Infarction,inferior myocardial infarction,161,,,
ASMI,anteroseptal myocardial infarction,1.0,,,MI,AMI,Myocardial Infarction,anteroseptal myocardial infarction,165,,,
LMI,lateral myocardial infarction,1.0,,,MI,LMI,Myocardial Infarction,lateral myocardial infarction,163,,,
"""  # noqa: E501

#: Plausible misreadings: an annotator who misses a label sometimes writes its look-alike (an
#: old anteroseptal infarct and the poor R progression of LVH, ischaemic and non-specific ST-T).
_CONFUSED = {
    "CRBBB": "IRBBB",
    "IRBBB": "CRBBB",
    "STACH": "AFIB",
    "AFIB": "STACH",
    "ISC_": "NDT",
    "NDT": "ISC_",
    "ASMI": "LVH",
    "LVH": "ASMI",
}


def tis_codes(labels: tuple[str, ...]) -> str:
    """';'-joined TIS codes, e.g. '1.1;2.1' for a normal ECG."""
    codes = [TIS_CODES[lab] for lab in labels]
    if not _RHYTHM & set(labels):
        codes.append("2.1")
    return ";".join(sorted(codes, key=lambda c: [int(p) for p in c.split(".")]))


def scp_codes(labels: tuple[str, ...]) -> str:
    """PTB-XL's dict literal: diagnostic statements with likelihood 100, rhythm ones with 0."""
    codes = {lab: 0.0 if lab in _RHYTHM else 100.0 for lab in labels}
    if not _RHYTHM & set(labels):
        codes["SR"] = 0.0
    return repr(codes)


def annotate(
    rng: np.random.Generator, truth: tuple[str, ...], error_rate: float
) -> tuple[str, ...]:
    """The labels an annotator with this error rate writes for an ECG whose truth is truth.

    Each true finding is missed with probability error_rate (half the time written as a
    neighbouring diagnosis), and a spurious finding is added with probability error_rate / 2.
    """
    written = set(truth) - {"NORM"}
    for label in sorted(written):
        if rng.random() < error_rate:
            written.discard(label)
            swap = _CONFUSED.get(label)
            if swap and rng.random() < 0.5 and is_consistent(written | {swap}):
                written.add(swap)
    if rng.random() < error_rate / 2:
        extra = ABNORMAL[rng.integers(len(ABNORMAL))]
        if is_consistent(written | {extra}):
            written.add(extra)
    return normalise(written)
