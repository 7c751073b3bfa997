-- The acquirer's id for the charge behind an intent: set when the acquirer first answers, and
-- what capture, void and refund name. Its presence also tells a confirm command (authorize)
-- from a capture command while both leave the intent in `processing`.
ALTER TABLE payment_intents ADD COLUMN acquirer_charge_id TEXT;
