"""Column indices of the per-group launch tables shared by the kernels and ``layout``.

Pointer table (int64, one row per parameter): the raw addresses of the tensors a kernel touches.
Coefficient table (float32, one row per parameter): this step's per-parameter scalars, written by a
scalar kernel (gate or AdamW bias corrections) and read by the element-wise pass.
Partial sums (float32, one row per chunk, padded to 8 columns): the sensor reductions of one chunk.
"""

# pointer table columns
T_P, T_G, T_M, T_V, T_SENSORS, T_STEP, T_M_DECAY, T_V_DECAY = range(8)
N_PTR = 8

# coefficient table columns
(C_APPLIED,      # 1.0 when the gradient is finite (the step is applied), else 0.0
 C_CLIP,         # clip threshold k·G/√N (inf: off)
 C_BETA2,        # β₂ of this step
 C_ONE_MINUS_B2,  # 1 − β₂ (rounded from float64, as torch does)
 C_SQRT_BC2,     # √(1 − P₂)
 C_STEP_A,       # coefficient of the Adam direction in the update: lr·A·T·c_a/(1 − P₁)  (AdamW: lr/(1 − P₁))
 C_DIR_A,        # c_a/(1 − P₁): the Adam direction's weight in d (for ‖d‖²)
 C_STEP_O,       # lr·A·T·c_o
 C_DIR_O,        # c_o
 C_BC2,          # 1 − P₂ (AdamW: v is divided by it before the square root, nanochat's order)
 C_WD,           # cautious weight decay coefficient lr·σ̂·wd
 ) = range(11)
N_COEF = 11

# partial-sum columns (see fusedgate.gate.observe_param)
PS_GG, PS_GM, PS_MM, PS_PP, PS_DD, PS_UU = range(6)
N_PS = 8   # padded to a power of two

# static per-parameter float64 table (built once per layout)
ST_SQRT_NUMEL, ST_ADAM_BASE, ST_ORTHO_BASE, ST_DECAY_SCALE = range(4)
N_STATIC = 4
