"""HRM model: configuration, inner model, segment and ACT wrapper."""
from hrm_jax.models.act import ACTCarry, IGNORE_LABEL_ID, act_step, initial_carry, reset_halted
from hrm_jax.models.hrm import HRMConfig, HRMInner, count_params, init_variables, segment
