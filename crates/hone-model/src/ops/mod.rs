//! Differentiable ops with hand-written backward passes (see DESIGN.md, "Performance model").
