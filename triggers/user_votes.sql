-- Publish public.user_votes: every insert, update and delete reaches pgrelay subscribers.
CREATE OR REPLACE TRIGGER pgrelay_notify
    AFTER INSERT OR UPDATE OR DELETE ON public.user_votes
    FOR EACH ROW EXECUTE FUNCTION pgrelay.notify_change();
